/* The one implementation of conversions between the float dtypes (f32, bf16,
 * f16). Every path gives the same bits as the scalar ap_f32_to_bf16 /
 * ap_f32_to_f16 / ap_f16_to_f32 of core/internal.h: round to nearest even,
 * NaN stays NaN (quiet), subnormals are kept whatever FTZ/DAZ say (the
 * library runs with both on). ap_convert (core/tensor.c) is the entry point;
 * these run on the calling thread. */
#ifndef AP_BACKEND_CPU_CONVERT_H
#define AP_BACKEND_CPU_CONVERT_H

#include "core/internal.h"

/* Kernel levels, chosen at run time; lower levels stay callable for tests. */
typedef enum { AP_CVT_PORTABLE = 0, AP_CVT_AVX2 /* + F16C */, AP_CVT_AVX512BF16, AP_CVT_COUNT_ } ap_cvt_isa;

/* The best level this CPU runs. */
ap_cvt_isa ap_cpu_convert_isa(void);

/* n elements of src (float dtype sd) into dst (float dtype dd), on the calling
 * thread. src needs no alignment (file mappings); dst is aligned to its
 * element size. dd == sd is a copy. */
void ap_cpu_convert(void *dst, ap_dtype dd, const void *src, ap_dtype sd, int64_t n);

/* The same with the kernel level forced (isa must not exceed
 * ap_cpu_convert_isa()). */
void ap_cpu_convert_at(ap_cvt_isa isa, void *dst, ap_dtype dd, const void *src, ap_dtype sd, int64_t n);

/* f32 -> bf16 for the matmul/conv operands: ap_convert, threaded for long runs. */
static inline void ap_cpu_f32_to_bf16(uint16_t *dst, const float *src, int64_t n) {
    ap_convert(dst, AP_BF16, src, AP_F32, n);
}

#endif
