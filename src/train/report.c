/* The run report: inline SVG curves and base64 PNG grids in one HTML file. */
#include "report.h"

#include "core/internal.h"
#include "io/atomic.h"
#include "io/json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct {
    int n, cap;
    double *x, *y, *sd;
    char **grid;
} series;

static void series_free(series *s) {
    for (int i = 0; i < s->n; i++) free(s->grid[i]);
    free(s->x);
    free(s->y);
    free(s->sd);
    free(s->grid);
}

/* Reads step, reward_mean, reward_std (and grid) from a .jsonl file; a missing file is an empty series. */
static void read_jsonl(const char *path, series *s) {
    memset(s, 0, sizeof *s);
    FILE *f = fopen(path, "r");
    if (!f) return;
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        char err[64];
        ap_json *j = ap_json_parse(line, strlen(line), err, sizeof err);
        double st, m, sd = 0;
        if (j && ap_json_num(ap_json_get(j, "step"), &st) && ap_json_num(ap_json_get(j, "reward_mean"), &m)) {
            ap_json_num(ap_json_get(j, "reward_std"), &sd);
            if (s->n == s->cap) {
                s->cap = s->cap ? 2 * s->cap : 64;
                s->x = realloc(s->x, sizeof(double) * (size_t)s->cap);
                s->y = realloc(s->y, sizeof(double) * (size_t)s->cap);
                s->sd = realloc(s->sd, sizeof(double) * (size_t)s->cap);
                s->grid = realloc(s->grid, sizeof(char *) * (size_t)s->cap);
            }
            const char *g = ap_json_str(ap_json_get(j, "grid"));
            s->x[s->n] = st, s->y[s->n] = m, s->sd[s->n] = sd;
            s->grid[s->n] = g ? strdup(g) : NULL;
            s->n++;
        }
        ap_json_free(j);
    }
    fclose(f);
}

/* An SVG line chart of y(x) with a +-sd band. */
static void svg_chart(FILE *o, const series *s, const char *title) {
    const int W = 640, H = 240, L = 60, R = 20, T = 30, B = 30;
    fprintf(o, "<h2>%s</h2>\n", title);
    if (s->n == 0) {
        fprintf(o, "<p>no data yet</p>\n");
        return;
    }
    double x0 = s->x[0], x1 = s->x[0], y0 = s->y[0] - s->sd[0], y1 = s->y[0] + s->sd[0];
    for (int i = 0; i < s->n; i++) {
        x0 = fmin(x0, s->x[i]), x1 = fmax(x1, s->x[i]);
        y0 = fmin(y0, s->y[i] - s->sd[i]), y1 = fmax(y1, s->y[i] + s->sd[i]);
    }
    if (x1 == x0) x1 = x0 + 1;
    if (y1 == y0) y0 -= 0.5, y1 += 0.5;
#define PX(v) (L + ((v) - x0) / (x1 - x0) * (W - L - R))
#define PY(v) (H - B - ((v) - y0) / (y1 - y0) * (H - T - B))
    fprintf(o, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-size=\"11\" font-family=\"sans-serif\">\n", W, H);
    fprintf(o, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#999\"/>\n", L, T, W - L - R, H - T - B);
    fprintf(o, "<polygon fill=\"#c6dbef\" points=\"");
    for (int i = 0; i < s->n; i++) fprintf(o, "%.1f,%.1f ", PX(s->x[i]), PY(s->y[i] + s->sd[i]));
    for (int i = s->n - 1; i >= 0; i--) fprintf(o, "%.1f,%.1f ", PX(s->x[i]), PY(s->y[i] - s->sd[i]));
    fprintf(o, "\"/>\n<polyline fill=\"none\" stroke=\"#08519c\" stroke-width=\"1.5\" points=\"");
    for (int i = 0; i < s->n; i++) fprintf(o, "%.1f,%.1f ", PX(s->x[i]), PY(s->y[i]));
    fprintf(o, "\"/>\n");
    fprintf(o, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%.4g</text>\n", L - 4, T + 4, y1);
    fprintf(o, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%.4g</text>\n", L - 4, H - B, y0);
    fprintf(o, "<text x=\"%d\" y=\"%d\">step %.0f</text>\n", L, H - 10, x0);
    fprintf(o, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">step %.0f</text>\n", W - R, H - 10, x1);
    fprintf(o, "</svg>\n");
#undef PX
#undef PY
}

static void base64_file(FILE *o, const char *path) {
    static const char tb[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    FILE *f = fopen(path, "rb");
    if (!f) return;
    unsigned char in[3];
    size_t n;
    while ((n = fread(in, 1, 3, f)) > 0) {
        unsigned v = (unsigned)in[0] << 16 | (n > 1 ? (unsigned)in[1] << 8 : 0) | (n > 2 ? in[2] : 0);
        fputc(tb[(v >> 18) & 63], o);
        fputc(tb[(v >> 12) & 63], o);
        fputc(n > 1 ? tb[(v >> 6) & 63] : '=', o);
        fputc(n > 2 ? tb[v & 63] : '=', o);
        if (n < 3) break;
    }
    fclose(f);
}

static void html_text(FILE *o, const char *s) {
    for (; *s; s++) {
        if (*s == '<') fputs("&lt;", o);
        else if (*s == '>') fputs("&gt;", o);
        else if (*s == '&') fputs("&amp;", o);
        else fputc(*s, o);
    }
}

ap_status ap_report_write(ap_ctx *c, const char *run_dir) {
    char p[4096];
    series tr, ev;
    snprintf(p, sizeof p, "%s/log.jsonl", run_dir);
    read_jsonl(p, &tr);
    snprintf(p, sizeof p, "%s/eval.jsonl", run_dir);
    read_jsonl(p, &ev);
    snprintf(p, sizeof p, "%s/report.html", run_dir);
    ap_atomic_file af;
    ap_status st = ap_atomic_open(c, p, &af);
    if (st == AP_OK) {
        FILE *o = af.f;
        fprintf(o, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>alignprop run: ");
        html_text(o, run_dir);
        fprintf(o, "</title>\n<style>body{font-family:sans-serif;margin:2em;max-width:1000px}"
                   "img{image-rendering:pixelated;max-width:100%%;border:1px solid #ccc}"
                   "td,th{padding:2px 8px;text-align:right}</style></head><body>\n<h1>alignprop run: ");
        html_text(o, run_dir);
        fprintf(o, "</h1>\n");
        if (tr.n > 0)
            fprintf(o, "<p>%d training steps; reward %.6g at step %.0f, %.6g at step %.0f.</p>\n", tr.n, tr.y[0],
                    tr.x[0], tr.y[tr.n - 1], tr.x[tr.n - 1]);
        if (ev.n > 0)
            fprintf(o, "<p>Evaluation reward: %.6g before training, %.6g at step %.0f (change %+.6g).</p>\n", ev.y[0],
                    ev.y[ev.n - 1], ev.x[ev.n - 1], ev.y[ev.n - 1] - ev.y[0]);
        svg_chart(o, &tr, "Training reward (mean and std per step)");
        svg_chart(o, &ev, "Evaluation reward (fixed prompts and seeds)");
        if (ev.n > 0) {
            fprintf(o, "<h2>Evaluation images</h2>\n<table><tr><th>step</th><th>reward</th><th></th></tr>\n");
            for (int i = 0; i < ev.n; i++) {
                fprintf(o, "<tr><td>%.0f</td><td>%.6g</td><td>", ev.x[i], ev.y[i]);
                if (ev.grid[i]) {
                    char g[4200];
                    snprintf(g, sizeof g, "%s/%s", run_dir, ev.grid[i]);
                    fprintf(o, "<img alt=\"step %.0f\" src=\"data:image/png;base64,", ev.x[i]);
                    base64_file(o, g);
                    fprintf(o, "\">");
                }
                fprintf(o, "</td></tr>\n");
            }
            fprintf(o, "</table>\n");
        }
        fprintf(o, "<p>Written by alignprop %s. The settings are in config.json.</p>\n</body></html>\n",
                ap_version_string());
        st = ap_atomic_commit(c, &af);
    }
    series_free(&tr);
    series_free(&ev);
    return st;
}
