/*
 * A stand-in for cudart, cuBLAS and cuDNN that runs on the CPU, for testing the CUDA backend's host side on a
 * machine without a GPU (FakeCudaTests builds it and loads it as libcudart.so.12, libcublas.so.12 and libcudnn.so.9).
 *
 * It implements only what Unrolled binds, from the libraries' documented semantics (NCHW float32, cross-correlation,
 * y = alpha * result + beta * y, BatchNorm with batch statistics and running ones, ReLU, max and average pooling,
 * column-major GEMM), with naive loops. It proves nothing about the real libraries; it does check the backend's own
 * logic: every pointer handed to a "device" function must lie inside memory that cudaMalloc returned (a host pointer
 * where device memory belongs fails with a status, as it would on a GPU), copies must go the way their kind says,
 * descriptors must be set before use, and the numbers that come back must equal PyTorch's.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ device memory, tracked */

typedef struct { char *base; size_t bytes; } Block;
static Block *blocks;
static size_t block_count, block_capacity;

static int is_device(const void *p, size_t bytes)
{
    const char *c = (const char *)p;
    for (size_t i = 0; i < block_count; i++)
        if (c >= blocks[i].base && c + bytes <= blocks[i].base + blocks[i].bytes) return 1;
    return 0;
}

static int device_floats(const void *p, long floats) { return p != NULL && is_device(p, (size_t)floats * sizeof(float)); }

/* ------------------------------------------------------------------ cudart */

enum { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorMemoryAllocation = 2 };

int cudaGetDeviceCount(int *count) { *count = 1; return cudaSuccess; }
int cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidValue; }
int cudaDeviceGetAttribute(int *value, int attribute, int device)
{
    (void)device;
    *value = attribute == 16 ? 1 : 0; /* one "multiprocessor", compute capability 0.0: not a GPU */
    return cudaSuccess;
}
int cudaRuntimeGetVersion(int *version) { *version = 12000; return cudaSuccess; }
int cudaDriverGetVersion(int *version) { *version = 12000; return cudaSuccess; }
int cudaMemGetInfo(size_t *free_bytes, size_t *total) { *free_bytes = (size_t)1 << 30; *total = (size_t)1 << 30; return cudaSuccess; }

int cudaMalloc(void **pointer, size_t bytes)
{
    if (block_count == block_capacity)
    {
        block_capacity = block_capacity ? 2 * block_capacity : 64;
        blocks = realloc(blocks, block_capacity * sizeof(Block));
    }
    /* Filled with NaN-like garbage: the backend must never read device memory it did not write. */
    char *p = malloc(bytes ? bytes : 1);
    if (!p) return cudaErrorMemoryAllocation;
    memset(p, 0xFF, bytes);
    blocks[block_count].base = p;
    blocks[block_count].bytes = bytes;
    block_count++;
    *pointer = p;
    return cudaSuccess;
}

int cudaFree(void *pointer)
{
    for (size_t i = 0; i < block_count; i++)
        if (blocks[i].base == pointer)
        {
            free(pointer);
            blocks[i] = blocks[--block_count];
            return cudaSuccess;
        }
    return cudaErrorInvalidValue;
}

int cudaMallocHost(void **pointer, size_t bytes) { *pointer = malloc(bytes ? bytes : 1); return *pointer ? cudaSuccess : cudaErrorMemoryAllocation; }
int cudaFreeHost(void *pointer) { free(pointer); return cudaSuccess; }

int cudaMemcpyAsync(void *destination, const void *source, size_t bytes, int kind, void *stream)
{
    (void)stream;
    int ok = kind == 1 ? is_device(destination, bytes) && !is_device(source, 1)
           : kind == 2 ? is_device(source, bytes) && !is_device(destination, 1)
           : kind == 3 ? is_device(source, bytes) && is_device(destination, bytes) : 0;
    if (!ok) return cudaErrorInvalidValue;
    memmove(destination, source, bytes);
    return cudaSuccess;
}

int cudaMemsetAsync(void *destination, int value, size_t bytes, void *stream)
{
    (void)stream;
    if (!is_device(destination, bytes)) return cudaErrorInvalidValue;
    memset(destination, value, bytes);
    return cudaSuccess;
}

int cudaStreamCreate(void **stream) { *stream = (void *)0x5; return cudaSuccess; }
int cudaStreamDestroy(void *stream) { (void)stream; return cudaSuccess; }
int cudaStreamSynchronize(void *stream) { (void)stream; return cudaSuccess; }
int cudaEventCreate(void **event) { *event = (void *)0x6; return cudaSuccess; }
int cudaEventDestroy(void *event) { (void)event; return cudaSuccess; }
int cudaEventRecord(void *event, void *stream) { (void)event; (void)stream; return cudaSuccess; }
int cudaEventSynchronize(void *event) { (void)event; return cudaSuccess; }
int cudaEventElapsedTime(float *ms, void *start, void *end) { (void)start; (void)end; *ms = 0; return cudaSuccess; }
const char *cudaGetErrorString(int error)
{
    return error == cudaErrorInvalidValue ? "fake cudart: invalid value (a pointer outside device memory, or a copy of the wrong kind)"
         : error == cudaErrorMemoryAllocation ? "fake cudart: out of memory" : "fake cudart: error";
}

/* ------------------------------------------------------------------ cuBLAS (column-major) */

enum { CUBLAS_OK = 0, CUBLAS_INVALID_VALUE = 7 };

int cublasCreate_v2(void **handle) { *handle = (void *)0x7; return CUBLAS_OK; }
int cublasDestroy_v2(void *handle) { (void)handle; return CUBLAS_OK; }
int cublasSetStream_v2(void *handle, void *stream) { (void)handle; (void)stream; return CUBLAS_OK; }
int cublasSetMathMode(void *handle, int mode) { (void)handle; return mode == 0 ? CUBLAS_OK : CUBLAS_INVALID_VALUE; }
const char *cublasGetStatusString(int status) { return status == CUBLAS_INVALID_VALUE ? "fake cuBLAS: invalid value (a pointer outside device memory)" : "fake cuBLAS: error"; }

int cublasSgemm_v2(void *handle, int ta, int tb, int m, int n, int k, const float *alpha, const float *a, int lda,
                   const float *b, int ldb, const float *beta, float *c, int ldc)
{
    (void)handle;
    long a_cols = ta ? m : k, b_cols = tb ? k : n;
    if (!device_floats(a, (long)lda * (a_cols - 1) + (ta ? k : m)) || !device_floats(b, (long)ldb * (b_cols - 1) + (tb ? n : k))
        || !device_floats(c, (long)ldc * (n - 1) + m))
        return CUBLAS_INVALID_VALUE;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++)
        {
            double sum = 0;
            for (int p = 0; p < k; p++)
                sum += (double)(ta ? a[(long)i * lda + p] : a[(long)p * lda + i]) * (tb ? b[(long)p * ldb + j] : b[(long)j * ldb + p]);
            float *out = &c[(long)j * ldc + i];
            *out = *beta == 0 ? (float)(*alpha * sum) : (float)(*alpha * sum + *beta * *out);
        }
    return CUBLAS_OK;
}

int cublasSgemv_v2(void *handle, int trans, int m, int n, const float *alpha, const float *a, int lda, const float *x, int incx,
                   const float *beta, float *y, int incy)
{
    (void)handle;
    int xl = trans ? m : n, yl = trans ? n : m;
    if (!device_floats(a, (long)lda * (n - 1) + m) || !device_floats(x, (long)(xl - 1) * incx + 1) || !device_floats(y, (long)(yl - 1) * incy + 1))
        return CUBLAS_INVALID_VALUE;
    for (int i = 0; i < yl; i++)
    {
        double sum = 0;
        for (int p = 0; p < xl; p++) sum += (double)(trans ? a[(long)i * lda + p] : a[(long)p * lda + i]) * x[(long)p * incx];
        float *out = &y[(long)i * incy];
        *out = *beta == 0 ? (float)(*alpha * sum) : (float)(*alpha * sum + *beta * *out);
    }
    return CUBLAS_OK;
}

int cublasSaxpy_v2(void *handle, int n, const float *alpha, const float *x, int incx, float *y, int incy)
{
    (void)handle;
    if (!device_floats(x, (long)(n - 1) * incx + 1) || !device_floats(y, (long)(n - 1) * incy + 1)) return CUBLAS_INVALID_VALUE;
    for (int i = 0; i < n; i++) y[(long)i * incy] += *alpha * x[(long)i * incx];
    return CUBLAS_OK;
}

int cublasSasum_v2(void *handle, int n, const float *x, int incx, float *result)
{
    (void)handle;
    if (!device_floats(x, (long)(n - 1) * incx + 1) || is_device(result, sizeof(float))) return CUBLAS_INVALID_VALUE; /* host pointer mode */
    float sum = 0;
    for (int i = 0; i < n; i++) sum += fabsf(x[(long)i * incx]);
    *result = sum;
    return CUBLAS_OK;
}

int cublasSscal_v2(void *handle, int n, const float *alpha, float *x, int incx)
{
    (void)handle;
    if (!device_floats(x, (long)(n - 1) * incx + 1)) return CUBLAS_INVALID_VALUE;
    for (int i = 0; i < n; i++) x[(long)i * incx] *= *alpha;
    return CUBLAS_OK;
}

/* ------------------------------------------------------------------ cuDNN */

enum { DNN_OK = 0, DNN_NOT_INITIALIZED = 1, DNN_BAD_PARAM = 3, DNN_NOT_SUPPORTED = 9 };

typedef struct { int set, n, c, h, w; } Tensor;
typedef struct { int set, k, c, h, w; } Filter;
typedef struct { int set, pad_h, pad_w, stride_h, stride_w, dil_h, dil_w, mode; } Conv;
typedef struct { int set, mode, window_h, window_w, pad_h, pad_w, stride_h, stride_w; } Pool;
typedef struct { int set, mode; } Act;

const char *cudnnGetErrorString(int status)
{
    return status == DNN_NOT_INITIALIZED ? "fake cuDNN: not initialized (FAKECUDA_FAIL)"
         : status == DNN_BAD_PARAM ? "fake cuDNN: bad parameter (a pointer outside device memory, an unset descriptor or mismatched shapes)"
         : status == DNN_NOT_SUPPORTED ? "fake cuDNN: not supported by the stand-in" : "fake cuDNN: error";
}
size_t cudnnGetVersion(void) { return 90000; }
/* FAKECUDA_FAIL=cudnnCreate makes the handle's creation fail (CUDNN_STATUS_NOT_INITIALIZED), as a broken install would. */
int cudnnCreate(void **handle)
{
    const char *fail = getenv("FAKECUDA_FAIL");
    if (fail && strcmp(fail, "cudnnCreate") == 0) return DNN_NOT_INITIALIZED;
    *handle = (void *)0x8;
    return DNN_OK;
}
int cudnnDestroy(void *handle) { (void)handle; return DNN_OK; }
int cudnnSetStream(void *handle, void *stream) { (void)handle; (void)stream; return DNN_OK; }

int cudnnCreateTensorDescriptor(Tensor **d) { *d = calloc(1, sizeof(Tensor)); return DNN_OK; }
int cudnnDestroyTensorDescriptor(Tensor *d) { free(d); return DNN_OK; }
int cudnnSetTensor4dDescriptor(Tensor *d, int format, int type, int n, int c, int h, int w)
{
    if (format != 0 || type != 0 || n <= 0 || c <= 0 || h <= 0 || w <= 0) return DNN_BAD_PARAM;
    *d = (Tensor){ 1, n, c, h, w };
    return DNN_OK;
}
int cudnnCreateFilterDescriptor(Filter **d) { *d = calloc(1, sizeof(Filter)); return DNN_OK; }
int cudnnDestroyFilterDescriptor(Filter *d) { free(d); return DNN_OK; }
int cudnnSetFilter4dDescriptor(Filter *d, int type, int format, int k, int c, int h, int w)
{
    if (format != 0 || type != 0 || k <= 0 || c <= 0 || h <= 0 || w <= 0) return DNN_BAD_PARAM;
    *d = (Filter){ 1, k, c, h, w };
    return DNN_OK;
}
int cudnnCreateConvolutionDescriptor(Conv **d) { *d = calloc(1, sizeof(Conv)); return DNN_OK; }
int cudnnDestroyConvolutionDescriptor(Conv *d) { free(d); return DNN_OK; }
int cudnnSetConvolution2dDescriptor(Conv *d, int ph, int pw, int sh, int sw, int dh, int dw, int mode, int type)
{
    if (type != 0 || sh <= 0 || sw <= 0 || ph < 0 || pw < 0) return DNN_BAD_PARAM;
    *d = (Conv){ 1, ph, pw, sh, sw, dh, dw, mode };
    return DNN_OK;
}
int cudnnSetConvolutionMathType(Conv *d, int math) { (void)math; return d->set ? DNN_OK : DNN_BAD_PARAM; }

static long count_of(const Tensor *t) { return (long)t->n * t->c * t->h * t->w; }
static int same_shape(const Tensor *a, const Tensor *b) { return a->set && b->set && a->n == b->n && a->c == b->c && a->h == b->h && a->w == b->w; }

/* The shapes of a convolution: x [n, c, h, w] * w [k, c, r, s] -> y [n, k, oh, ow], cross-correlation, no dilation. */
static int conv_shapes_ok(const Tensor *x, const Filter *f, const Conv *c, const Tensor *y)
{
    if (!x->set || !f->set || !c->set || !y->set) return 0;
    if (c->mode != 1 || c->dil_h != 1 || c->dil_w != 1) return 0;
    int oh = (x->h + 2 * c->pad_h - f->h) / c->stride_h + 1, ow = (x->w + 2 * c->pad_w - f->w) / c->stride_w + 1;
    return x->n == y->n && x->c == f->c && y->c == f->k && y->h == oh && y->w == ow;
}

typedef struct { int algo, status; float time; size_t memory; int determinism, math, reserved[3]; } AlgoPerf;

static int find(const Tensor *x, const Filter *f, const Conv *c, const Tensor *y, int requested, int *returned, AlgoPerf *results)
{
    if (!conv_shapes_ok(x, f, c, y) || requested < 1) return DNN_BAD_PARAM;
    /* One "algorithm" that asks for a small workspace, so that the backend's workspace is exercised. */
    results[0] = (AlgoPerf){ 0, 0, 1.0f, 256, 1, 3, { 0, 0, 0 } };
    *returned = 1;
    return DNN_OK;
}

int cudnnFindConvolutionForwardAlgorithm(void *h, Tensor *x, Filter *f, Conv *c, Tensor *y, int requested, int *returned, AlgoPerf *results)
{ (void)h; return find(x, f, c, y, requested, returned, results); }
int cudnnFindConvolutionBackwardDataAlgorithm(void *h, Filter *f, Tensor *dy, Conv *c, Tensor *dx, int requested, int *returned, AlgoPerf *results)
{ (void)h; return find(dx, f, c, dy, requested, returned, results); }
int cudnnFindConvolutionBackwardFilterAlgorithm(void *h, Tensor *x, Tensor *dy, Conv *c, Filter *dw, int requested, int *returned, AlgoPerf *results)
{ (void)h; return find(x, dw, c, dy, requested, returned, results); }
int cudnnGetConvolutionForwardWorkspaceSize(void *h, Tensor *x, Filter *f, Conv *c, Tensor *y, int algo, size_t *bytes)
{ (void)h; (void)algo; if (!conv_shapes_ok(x, f, c, y)) return DNN_BAD_PARAM; *bytes = 256; return DNN_OK; }

static void blend(float *out, long count, const double *result, float alpha, float beta)
{
    for (long i = 0; i < count; i++) out[i] = beta == 0 ? (float)(alpha * result[i]) : (float)(alpha * result[i] + beta * out[i]);
}

/* For every (image, out channel, oy, ox, in channel, ky, kx) that falls inside the image: BODY with the flat indices xi, wi, yi. */
#define FOR_EACH_TAP(X_, F_, C_, Y_, BODY)                                                                                  \
    for (int n_ = 0; n_ < (Y_)->n; n_++)                                                                                  \
    for (int k_ = 0; k_ < (Y_)->c; k_++)                                                                                  \
    for (int oy_ = 0; oy_ < (Y_)->h; oy_++)                                                                               \
    for (int ox_ = 0; ox_ < (Y_)->w; ox_++)                                                                               \
    for (int c_ = 0; c_ < (X_)->c; c_++)                                                                                  \
    for (int ky_ = 0; ky_ < (F_)->h; ky_++)                                                                               \
    for (int kx_ = 0; kx_ < (F_)->w; kx_++)                                                                               \
    {                                                                                                                    \
        int iy_ = oy_ * (C_)->stride_h - (C_)->pad_h + ky_, ix_ = ox_ * (C_)->stride_w - (C_)->pad_w + kx_;                  \
        if (iy_ < 0 || iy_ >= (X_)->h || ix_ < 0 || ix_ >= (X_)->w) continue;                                              \
        long xi = (((long)n_ * (X_)->c + c_) * (X_)->h + iy_) * (X_)->w + ix_;                                              \
        long wi = (((long)k_ * (F_)->c + c_) * (F_)->h + ky_) * (F_)->w + kx_;                                              \
        long yi = (((long)n_ * (Y_)->c + k_) * (Y_)->h + oy_) * (Y_)->w + ox_;                                              \
        BODY;                                                                                                            \
    }

static int workspace_ok(const void *workspace, size_t bytes) { return bytes >= 256 && is_device(workspace, 256); }

int cudnnConvolutionForward(void *h, const float *alpha, Tensor *xd, const float *x, Filter *fd, const float *w, Conv *cd, int algo,
                            void *workspace, size_t workspace_bytes, const float *beta, Tensor *yd, float *y)
{
    (void)h; (void)algo;
    long wn = (long)fd->k * fd->c * fd->h * fd->w;
    if (!conv_shapes_ok(xd, fd, cd, yd) || !device_floats(x, count_of(xd)) || !device_floats(w, wn) || !device_floats(y, count_of(yd))
        || !workspace_ok(workspace, workspace_bytes))
        return DNN_BAD_PARAM;
    double *r = calloc((size_t)count_of(yd), sizeof(double));
    FOR_EACH_TAP(xd, fd, cd, yd, r[yi] += (double)x[xi] * w[wi])
    blend(y, count_of(yd), r, *alpha, *beta);
    free(r);
    return DNN_OK;
}

int cudnnConvolutionBackwardData(void *h, const float *alpha, Filter *fd, const float *w, Tensor *dyd, const float *dy, Conv *cd, int algo,
                                 void *workspace, size_t workspace_bytes, const float *beta, Tensor *dxd, float *dx)
{
    (void)h; (void)algo;
    long wn = (long)fd->k * fd->c * fd->h * fd->w;
    if (!conv_shapes_ok(dxd, fd, cd, dyd) || !device_floats(w, wn) || !device_floats(dy, count_of(dyd)) || !device_floats(dx, count_of(dxd))
        || !workspace_ok(workspace, workspace_bytes))
        return DNN_BAD_PARAM;
    double *r = calloc((size_t)count_of(dxd), sizeof(double));
    FOR_EACH_TAP(dxd, fd, cd, dyd, r[xi] += (double)dy[yi] * w[wi])
    blend(dx, count_of(dxd), r, *alpha, *beta);
    free(r);
    return DNN_OK;
}

int cudnnConvolutionBackwardFilter(void *h, const float *alpha, Tensor *xd, const float *x, Tensor *dyd, const float *dy, Conv *cd, int algo,
                                   void *workspace, size_t workspace_bytes, const float *beta, Filter *fd, float *dw)
{
    (void)h; (void)algo;
    long wn = (long)fd->k * fd->c * fd->h * fd->w;
    if (!conv_shapes_ok(xd, fd, cd, dyd) || !device_floats(x, count_of(xd)) || !device_floats(dy, count_of(dyd)) || !device_floats(dw, wn)
        || !workspace_ok(workspace, workspace_bytes))
        return DNN_BAD_PARAM;
    double *r = calloc((size_t)wn, sizeof(double));
    FOR_EACH_TAP(xd, fd, cd, dyd, r[wi] += (double)dy[yi] * x[xi])
    blend(dw, wn, r, *alpha, *beta);
    free(r);
    return DNN_OK;
}

/* Spatial BatchNorm: one value per channel, over (n, h, w). */
static int bn_ok(const Tensor *x, const Tensor *y, const Tensor *bn)
{
    return x->set && y->set && bn->set && x->n == y->n && x->c == y->c && x->h == y->h && x->w == y->w
        && bn->n == 1 && bn->c == x->c && bn->h == 1 && bn->w == 1;
}

#define AT(t, n, ch, i) ((((long)(n) * (t)->c + (ch)) * (t)->h * (t)->w) + (i))

int cudnnBatchNormalizationForwardInference(void *h, int mode, const float *alpha, const float *beta, Tensor *xd, const float *x, Tensor *yd,
                                            float *y, Tensor *bnd, const float *scale, const float *bias, const float *mean,
                                            const float *variance, double epsilon)
{
    (void)h;
    int c = xd->c;
    if (mode != 1 || !bn_ok(xd, yd, bnd) || !device_floats(x, count_of(xd)) || !device_floats(y, count_of(yd)) || !device_floats(scale, c)
        || !device_floats(bias, c) || !device_floats(mean, c) || !device_floats(variance, c))
        return DNN_BAD_PARAM;
    long hw = (long)xd->h * xd->w;
    for (int n = 0; n < xd->n; n++)
        for (int ch = 0; ch < c; ch++)
        {
            double inv = 1.0 / sqrt((double)variance[ch] + epsilon);
            for (long i = 0; i < hw; i++)
            {
                double v = scale[ch] * ((x[AT(xd, n, ch, i)] - (double)mean[ch]) * inv) + bias[ch];
                float *out = &y[AT(yd, n, ch, i)];
                *out = *beta == 0 ? (float)(*alpha * v) : (float)(*alpha * v + *beta * *out);
            }
        }
    return DNN_OK;
}

int cudnnBatchNormalizationForwardTraining(void *h, int mode, const float *alpha, const float *beta, Tensor *xd, const float *x, Tensor *yd,
                                           float *y, Tensor *bnd, const float *scale, const float *bias, double factor, float *running_mean,
                                           float *running_var, double epsilon, float *save_mean, float *save_inv_var)
{
    (void)h;
    int c = xd->c;
    if (mode != 1 || !bn_ok(xd, yd, bnd) || !device_floats(x, count_of(xd)) || !device_floats(y, count_of(yd)) || !device_floats(scale, c)
        || !device_floats(bias, c) || !device_floats(running_mean, c) || !device_floats(running_var, c) || !device_floats(save_mean, c)
        || !device_floats(save_inv_var, c))
        return DNN_BAD_PARAM;
    long hw = (long)xd->h * xd->w, m = hw * xd->n;
    if (m < 2) return DNN_BAD_PARAM;
    for (int ch = 0; ch < c; ch++)
    {
        double sum = 0, squares = 0;
        for (int n = 0; n < xd->n; n++)
            for (long i = 0; i < hw; i++) sum += x[AT(xd, n, ch, i)];
        double mean = sum / m;
        for (int n = 0; n < xd->n; n++)
            for (long i = 0; i < hw; i++) { double d = x[AT(xd, n, ch, i)] - mean; squares += d * d; }
        double variance = squares / m, inv = 1.0 / sqrt(variance + epsilon);
        for (int n = 0; n < xd->n; n++)
            for (long i = 0; i < hw; i++)
            {
                double v = scale[ch] * ((x[AT(xd, n, ch, i)] - mean) * inv) + bias[ch];
                float *out = &y[AT(yd, n, ch, i)];
                *out = *beta == 0 ? (float)(*alpha * v) : (float)(*alpha * v + *beta * *out);
            }
        running_mean[ch] = (float)((1 - factor) * running_mean[ch] + factor * mean);
        running_var[ch] = (float)((1 - factor) * running_var[ch] + factor * variance * m / (m - 1));
        save_mean[ch] = (float)mean;
        save_inv_var[ch] = (float)inv;
    }
    return DNN_OK;
}

int cudnnBatchNormalizationBackward(void *h, int mode, const float *alpha_data, const float *beta_data, const float *alpha_param,
                                    const float *beta_param, Tensor *xd, const float *x, Tensor *dyd, const float *dy, Tensor *dxd, float *dx,
                                    Tensor *bnd, const float *scale, float *dscale, float *dbias, double epsilon, const float *saved_mean,
                                    const float *saved_inv_var)
{
    (void)h; (void)epsilon;
    int c = xd->c;
    if (mode != 1 || !bn_ok(xd, dyd, bnd) || !bn_ok(xd, dxd, bnd) || !device_floats(x, count_of(xd)) || !device_floats(dy, count_of(dyd))
        || !device_floats(dx, count_of(dxd)) || !device_floats(scale, c) || !device_floats(dscale, c) || !device_floats(dbias, c)
        || !device_floats(saved_mean, c) || !device_floats(saved_inv_var, c))
        return DNN_BAD_PARAM;
    if (dx == dy) return DNN_NOT_SUPPORTED; /* the backend keeps them apart */
    long hw = (long)xd->h * xd->w, m = hw * xd->n;
    for (int ch = 0; ch < c; ch++)
    {
        double mean = saved_mean[ch], inv = saved_inv_var[ch], sum_dy = 0, sum_dy_xhat = 0;
        for (int n = 0; n < xd->n; n++)
            for (long i = 0; i < hw; i++)
            {
                double g = dy[AT(dyd, n, ch, i)];
                sum_dy += g;
                sum_dy_xhat += g * (x[AT(xd, n, ch, i)] - mean) * inv;
            }
        for (int n = 0; n < xd->n; n++)
            for (long i = 0; i < hw; i++)
            {
                double xhat = (x[AT(xd, n, ch, i)] - mean) * inv;
                double v = scale[ch] * inv * (dy[AT(dyd, n, ch, i)] - sum_dy / m - xhat * sum_dy_xhat / m);
                float *out = &dx[AT(dxd, n, ch, i)];
                *out = *beta_data == 0 ? (float)(*alpha_data * v) : (float)(*alpha_data * v + *beta_data * *out);
            }
        dscale[ch] = *beta_param == 0 ? (float)(*alpha_param * sum_dy_xhat) : (float)(*alpha_param * sum_dy_xhat + *beta_param * dscale[ch]);
        dbias[ch] = *beta_param == 0 ? (float)(*alpha_param * sum_dy) : (float)(*alpha_param * sum_dy + *beta_param * dbias[ch]);
    }
    return DNN_OK;
}

/* db = alpha * (per-channel sum of dy over n, h, w) + beta * db. */
int cudnnConvolutionBackwardBias(void *h, const float *alpha, Tensor *dyd, const float *dy, const float *beta, Tensor *dbd, float *db)
{
    (void)h;
    if (!dyd->set || !dbd->set || dbd->n != 1 || dbd->c != dyd->c || dbd->h != 1 || dbd->w != 1 || !device_floats(dy, count_of(dyd))
        || !device_floats(db, dyd->c))
        return DNN_BAD_PARAM;
    long hw = (long)dyd->h * dyd->w;
    for (int ch = 0; ch < dyd->c; ch++)
    {
        double sum = 0;
        for (int n = 0; n < dyd->n; n++)
            for (long i = 0; i < hw; i++) sum += dy[AT(dyd, n, ch, i)];
        db[ch] = *beta == 0 ? (float)(*alpha * sum) : (float)(*alpha * sum + *beta * db[ch]);
    }
    return DNN_OK;
}

typedef struct { int set, op; } OpT;
int cudnnCreateOpTensorDescriptor(OpT **d) { *d = calloc(1, sizeof(OpT)); return DNN_OK; }
int cudnnDestroyOpTensorDescriptor(OpT *d) { free(d); return DNN_OK; }
int cudnnSetOpTensorDescriptor(OpT *d, int op, int type, int nan)
{
    (void)nan;
    if (type != 0 || (op != 0 && op != 1)) return DNN_NOT_SUPPORTED;
    *d = (OpT){ 1, op };
    return DNN_OK;
}

/* C = op(alpha1 * A, alpha2 * B) + beta * C, same shapes (the stand-in broadcasts nothing here). */
int cudnnOpTensor(void *h, OpT *d, const float *alpha1, Tensor *ad, const float *a, const float *alpha2, Tensor *bd, const float *b,
                  const float *beta, Tensor *cd, float *c)
{
    (void)h;
    long count = count_of(cd);
    if (!d->set || !same_shape(ad, cd) || !same_shape(bd, cd) || !device_floats(a, count) || !device_floats(b, count) || !device_floats(c, count))
        return DNN_BAD_PARAM;
    for (long i = 0; i < count; i++)
    {
        double x = *alpha1 * (double)a[i], y = *alpha2 * (double)b[i], v = d->op == 1 ? x * y : x + y;
        c[i] = *beta == 0 ? (float)v : (float)(v + *beta * c[i]);
    }
    return DNN_OK;
}

int cudnnCreateActivationDescriptor(Act **d) { *d = calloc(1, sizeof(Act)); return DNN_OK; }
int cudnnDestroyActivationDescriptor(Act *d) { free(d); return DNN_OK; }
int cudnnSetActivationDescriptor(Act *d, int mode, int nan, double coefficient)
{
    (void)nan; (void)coefficient;
    if (mode != 1) return DNN_NOT_SUPPORTED;
    *d = (Act){ 1, mode };
    return DNN_OK;
}


int cudnnActivationForward(void *h, Act *act, const float *alpha, Tensor *xd, const float *x, const float *beta, Tensor *yd, float *y)
{
    (void)h;
    long count = count_of(xd);
    if (!act->set || !same_shape(xd, yd) || !device_floats(x, count) || !device_floats(y, count)) return DNN_BAD_PARAM;
    for (long i = 0; i < count; i++)
    {
        double v = x[i] > 0 ? x[i] : (x[i] != x[i] ? x[i] : 0);
        y[i] = *beta == 0 ? (float)(*alpha * v) : (float)(*alpha * v + *beta * y[i]);
    }
    return DNN_OK;
}

int cudnnActivationBackward(void *h, Act *act, const float *alpha, Tensor *yd, const float *y, Tensor *dyd, const float *dy, Tensor *xd,
                            const float *x, const float *beta, Tensor *dxd, float *dx)
{
    (void)h; (void)y;
    long count = count_of(xd);
    if (!act->set || !same_shape(xd, yd) || !same_shape(xd, dyd) || !same_shape(xd, dxd) || !device_floats(x, count)
        || !device_floats(y, count) || !device_floats(dy, count) || !device_floats(dx, count))
        return DNN_BAD_PARAM;
    for (long i = 0; i < count; i++)
    {
        double v = x[i] > 0 ? dy[i] : 0;
        dx[i] = *beta == 0 ? (float)(*alpha * v) : (float)(*alpha * v + *beta * dx[i]);
    }
    return DNN_OK;
}

/* C = alpha * A + beta * C, A broadcast over every dimension where it has 1. */
int cudnnAddTensor(void *h, const float *alpha, Tensor *ad, const float *a, const float *beta, Tensor *cd, float *c)
{
    (void)h;
    if (!ad->set || !cd->set) return DNN_BAD_PARAM;
    if ((ad->n != cd->n && ad->n != 1) || (ad->c != cd->c && ad->c != 1) || (ad->h != cd->h && ad->h != 1) || (ad->w != cd->w && ad->w != 1))
        return DNN_BAD_PARAM;
    if (!device_floats(a, count_of(ad)) || !device_floats(c, count_of(cd))) return DNN_BAD_PARAM;
    for (int n = 0; n < cd->n; n++)
        for (int ch = 0; ch < cd->c; ch++)
            for (int y = 0; y < cd->h; y++)
                for (int x = 0; x < cd->w; x++)
                {
                    long ci = (((long)n * cd->c + ch) * cd->h + y) * cd->w + x;
                    long ai = (((long)(ad->n == 1 ? 0 : n) * ad->c + (ad->c == 1 ? 0 : ch)) * ad->h + (ad->h == 1 ? 0 : y)) * ad->w + (ad->w == 1 ? 0 : x);
                    c[ci] = *beta == 0 ? *alpha * a[ai] : *alpha * a[ai] + *beta * c[ci];
                }
    return DNN_OK;
}

int cudnnCreatePoolingDescriptor(Pool **d) { *d = calloc(1, sizeof(Pool)); return DNN_OK; }
int cudnnDestroyPoolingDescriptor(Pool *d) { free(d); return DNN_OK; }
int cudnnSetPooling2dDescriptor(Pool *d, int mode, int nan, int wh, int ww, int ph, int pw, int sh, int sw)
{
    (void)nan;
    if ((mode != 0 && mode != 2) || wh <= 0 || ww <= 0 || sh <= 0 || sw <= 0) return DNN_BAD_PARAM;
    *d = (Pool){ 1, mode, wh, ww, ph, pw, sh, sw };
    return DNN_OK;
}

static int pool_ok(const Pool *p, const Tensor *x, const Tensor *y)
{
    if (!p->set || !x->set || !y->set || x->n != y->n || x->c != y->c) return 0;
    return y->h == (x->h + 2 * p->pad_h - p->window_h) / p->stride_h + 1 && y->w == (x->w + 2 * p->pad_w - p->window_w) / p->stride_w + 1;
}

/* The flat input index of each window's maximum (the first one on ties, NaN wins), or the window's mean. */
static double pool_window(const Pool *p, const Tensor *xd, const float *x, int n, int ch, int oy, int ox, long *argmax)
{
    double best = -INFINITY, sum = 0;
    long where = -1, count = 0;
    for (int ky = 0; ky < p->window_h; ky++)
        for (int kx = 0; kx < p->window_w; kx++)
        {
            int iy = oy * p->stride_h - p->pad_h + ky, ix = ox * p->stride_w - p->pad_w + kx;
            if (iy < 0 || iy >= xd->h || ix < 0 || ix >= xd->w) continue;
            long i = (((long)n * xd->c + ch) * xd->h + iy) * xd->w + ix;
            double v = x[i];
            if (where < 0 || v > best || (v != v && best == best)) { best = v; where = i; }
            sum += v;
            count++;
        }
    *argmax = where;
    return p->mode == 0 ? best : sum / count;
}

int cudnnPoolingForward(void *h, Pool *p, const float *alpha, Tensor *xd, const float *x, const float *beta, Tensor *yd, float *y)
{
    (void)h;
    if (!pool_ok(p, xd, yd) || !device_floats(x, count_of(xd)) || !device_floats(y, count_of(yd))) return DNN_BAD_PARAM;
    for (int n = 0; n < yd->n; n++)
        for (int ch = 0; ch < yd->c; ch++)
            for (int oy = 0; oy < yd->h; oy++)
                for (int ox = 0; ox < yd->w; ox++)
                {
                    long argmax;
                    double v = pool_window(p, xd, x, n, ch, oy, ox, &argmax);
                    float *out = &y[(((long)n * yd->c + ch) * yd->h + oy) * yd->w + ox];
                    *out = *beta == 0 ? (float)(*alpha * v) : (float)(*alpha * v + *beta * *out);
                }
    return DNN_OK;
}

int cudnnPoolingBackward(void *h, Pool *p, const float *alpha, Tensor *yd, const float *y, Tensor *dyd, const float *dy, Tensor *xd,
                         const float *x, const float *beta, Tensor *dxd, float *dx)
{
    (void)h;
    if (p->mode != 0) return DNN_NOT_SUPPORTED; /* the backend differentiates the average through cudnnAddTensor */
    if (!pool_ok(p, xd, yd) || !same_shape(yd, dyd) || !same_shape(xd, dxd) || !device_floats(x, count_of(xd)) || !device_floats(y, count_of(yd))
        || !device_floats(dy, count_of(dyd)) || !device_floats(dx, count_of(dxd)))
        return DNN_BAD_PARAM;
    double *r = calloc((size_t)count_of(dxd), sizeof(double));
    for (int n = 0; n < yd->n; n++)
        for (int ch = 0; ch < yd->c; ch++)
            for (int oy = 0; oy < yd->h; oy++)
                for (int ox = 0; ox < yd->w; ox++)
                {
                    long argmax;
                    long yi = (((long)n * yd->c + ch) * yd->h + oy) * yd->w + ox;
                    double v = pool_window(p, xd, x, n, ch, oy, ox, &argmax);
                    if (v != y[yi] && v == v) { free(r); return DNN_BAD_PARAM; } /* y is not this x's pooling */
                    if (argmax >= 0) r[argmax] += dy[yi];
                }
    blend(dx, count_of(dxd), r, *alpha, *beta);
    free(r);
    return DNN_OK;
}
