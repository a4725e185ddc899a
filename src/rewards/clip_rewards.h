/* The CLIP reward models: aesthetic (LAION aesthetic predictor v2 on CLIP
 * ViT-L/14), hps (HPSv2 / v2.1: OpenCLIP ViT-H/14) and pickscore (PickScore_v1:
 * CLIP-H in transformers layout), and the differentiable preprocessing they
 * share. See docs/rewards.md for the exact formulas and the weight files.
 *
 * Everything is built from differentiable core ops, so the tape takes each
 * reward's gradient back to the images; the towers' weights are frozen. */
#ifndef AP_REWARDS_CLIP_REWARDS_H
#define AP_REWARDS_CLIP_REWARDS_H

#include "models/clip.h"
#include "rewards/reward.h"

/* ------------------------------------------------------------ preprocessing
 * images [N,H,W,3] in [-1,1] -> CLIP pixels [N,S,S,3]:
 *   u = clamp(x/2 + 1/2, 0, 1)
 *   resize the shorter side to S, the longer to floor(S*long/short)
 *     (torchvision.transforms.Resize(S) on a tensor; skipped when the size
 *     already matches, as torchvision does)
 *   centre crop S x S, offsets round((size - S)/2) with Python's rounding
 *     (torchvision's CenterCrop; nothing to crop for square images)
 *   (u - mean[c]) / std[c] with CLIP's mean and std. */
typedef struct {
    ap_resize_mode mode; /* AP_RESIZE_BILINEAR (torchvision's Resize default) */
    int antialias;       /* 1: torchvision >= 0.17's tensor default; 0: the 0.15.2 AlignProp pinned */
} ap_clip_resize;

/* "bilinear" (the default; NULL or "" mean it), "bilinear-noaa", "bicubic",
 * "bicubic-noaa". Anything else is an error naming the spec. */
ap_status ap_clip_resize_parse(ap_ctx *c, const char *spec, ap_clip_resize *out);
const char *ap_clip_resize_str(const ap_clip_resize *r); /* the spec that parses back to r */
ap_tensor *ap_clip_preprocess(ap_ctx *c, ap_tensor *images, int size, const ap_clip_resize *r);

/* CLIP's normalisation (RGB), as torchvision.transforms.Normalize takes it. */
extern const float ap_clip_mean[3], ap_clip_std[3];

/* ------------------------------------------------------------ the aesthetic head
 * sac+logos+ava1-l14-linearMSE.pth, collapsed to score = w . e + b (it has no
 * activations; see aesthetic_head.c). */
#define AP_AESTHETIC_DIM 768
typedef struct {
    double w[AP_AESTHETIC_DIM];
    double b;
} ap_aesthetic_head;

struct ap_torchfile;
/* The head bundled in the library (assets/aesthetic/). */
ap_status ap_aesthetic_head_builtin(ap_ctx *c, ap_aesthetic_head *out);
/* A head from a .pth file with the same keys and shapes. */
ap_status ap_aesthetic_head_load(ap_ctx *c, const char *path, ap_aesthetic_head *out);
ap_status ap_aesthetic_head_from_torchfile(ap_ctx *c, const struct ap_torchfile *pt, const char *what,
                                           ap_aesthetic_head *out);
/* emb [N,768] (L2-normalised by the caller) -> scores [N], differentiable in emb. */
ap_tensor *ap_aesthetic_head_forward(ap_ctx *c, const ap_aesthetic_head *h, ap_tensor *emb);

/* ------------------------------------------------------------ the rewards
 * Registry constructors: weights from opts->models_dir (ap_reward_models_dir):
 *   aesthetic  DIR/clip-vit-large-patch14/   (openai/clip-vit-large-patch14)
 *   hps        DIR/HPS_v2.1_compressed.pt, else DIR/HPS_v2_compressed.pt   (xswu/HPSv2)
 *   pickscore  DIR/PickScore_v1/             (yuvalkirstain/PickScore_v1)
 * A missing file is AP_ERR_NOT_FOUND with a message naming what to put where. */
ap_status ap_reward_create_aesthetic(ap_ctx *c, const ap_reward_opts *opts, ap_reward **out);
ap_status ap_reward_create_hps(ap_ctx *c, const ap_reward_opts *opts, ap_reward **out);
ap_status ap_reward_create_pickscore(ap_ctx *c, const ap_reward_opts *opts, ap_reward **out);

/* The same rewards from explicit checkpoints (a file or an HF folder), for
 * tests, benchmarks and library users. */
ap_status ap_reward_aesthetic_open(ap_ctx *c, const char *clip_path, const ap_reward_opts *opts, ap_reward **out);
ap_status ap_reward_hps_open(ap_ctx *c, const char *path, const ap_reward_opts *opts, ap_reward **out);
ap_status ap_reward_pickscore_open(ap_ctx *c, const char *path, const ap_reward_opts *opts, ap_reward **out);

/* And from towers already built (the reward takes ownership of them, also on
 * failure), e.g. random full-size towers in the benchmark. hps and pickscore
 * score image and text embeddings by cosine times scale (1 for hps,
 * exp(logit_scale) for pickscore); tokens: ap_tok_opts_openclip for hps,
 * ap_tok_opts_sd1 (HF CLIPTokenizer) for pickscore. */
ap_status ap_reward_aesthetic_from(ap_ctx *c, ap_clip_vision *tower, const ap_aesthetic_head *head,
                                   const ap_clip_resize *r, ap_reward **out);
typedef enum { AP_CLIP_SCORE_HPS = 0, AP_CLIP_SCORE_PICKSCORE = 1 } ap_clip_score_kind;
ap_status ap_reward_clip_score_from(ap_ctx *c, ap_clip_score_kind kind, ap_clip_vision *vision,
                                    ap_clip_text *text, float scale, const ap_clip_resize *r,
                                    ap_reward **out);

#endif
