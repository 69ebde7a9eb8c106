/*
 * Native kernels of the Phi-3-V HD transform (optional; image_processing.py falls back to Pillow and
 * numpy when this module is not built). Two functions:
 *
 *   render_canvas: bilinear resize of an 8-bit RGB image, bit-identical to Pillow's
 *     Image.resize(size, Image.BILINEAR) (what the reference processor calls), written as three
 *     uint8 planes of a white-padded canvas in the image's own orientation.
 *   normalise_crops: the 336x336 local crops of such a canvas as float32 (v / 255 - mean) / std.
 *
 * Pillow's 8-bit resampler is separable: a pass along the image's x axis rounds to uint8, then a
 * pass along y. Each output sample is a weighted sum of the input samples under a triangle filter
 * of radius max(1, in/out) centred on the output sample, with weights normalised to sum 1 in
 * double precision, then rounded to fixed point with 22 fractional bits. The sums are integers
 * and the rounding is half-up, so reproducing the same weights and the same pass order gives the
 * same bytes. Portrait images are resized transposed by the reference (its "x" pass runs along the
 * image's y axis); we run the same two passes in the same order without transposing any memory.
 *
 * Why native: at num_crops 4 Pillow's resize alone is ~40% of the reference's time, and it sums
 * one pixel at a time. Here the pass along rows takes 8 rows at once (transposed in cache, so a tap
 * is one 32-byte read for 8 rows x 4 channels) and the pass across rows 16 bytes at once, in AVX2
 * int32 lanes: ~3x faster than Pillow, with the same integer arithmetic. benchmarks/processor.py
 * prints the figures.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* 32 bits of accumulator minus 8 bits of pixel value minus 2 bits of headroom, as Pillow's 8-bit
 * resampler: a sum of weights rounded up by at most one unit per tap never overflows. */
#define PRECISION_BITS 22
#define HALF (1 << (PRECISION_BITS - 1))
#define CROP 336
#define WHITE 255

typedef struct {
    int size;     /* output samples */
    int ksize;    /* weights stored per output sample */
    int *start;   /* first input sample of each output sample */
    int *count;   /* input samples used by each output sample (<= ksize) */
    int32_t *weights; /* size * ksize fixed-point weights */
} Taps;

static void taps_free(Taps *taps) { /* also on a zero-initialised or half-built Taps */
    free(taps->start);
    free(taps->count);
    free(taps->weights);
    taps->start = taps->count = NULL;
    taps->weights = NULL;
}

static double triangle(double x) {
    if (x < 0.0) {
        x = -x;
    }
    return x < 1.0 ? 1.0 - x : 0.0;
}

/* Weights of a resize from in_size to out_size samples, in the same double-precision operations
 * as Pillow, so that the rounded fixed-point weights are the same integers. 0 on success. */
static int taps_init(Taps *taps, int in_size, int out_size) {
    double scale = (double)in_size / out_size;
    double filter_scale = scale < 1.0 ? 1.0 : scale; /* upscaling keeps the filter's radius at 1 */
    double support = filter_scale;                   /* triangle radius 1, stretched */
    double inverse = 1.0 / filter_scale;
    int ksize = (int)ceil(support) * 2 + 1;
    double *raw = malloc(sizeof(double) * ksize);
    taps->size = out_size;
    taps->ksize = ksize;
    taps->start = malloc(sizeof(int) * out_size);
    taps->count = malloc(sizeof(int) * out_size);
    taps->weights = calloc((size_t)out_size * ksize, sizeof(int32_t));
    if (!raw || !taps->start || !taps->count || !taps->weights) {
        free(raw);
        taps_free(taps);
        return -1;
    }
    for (int out = 0; out < out_size; out++) {
        double centre = (out + 0.5) * scale;
        int first = (int)(centre - support + 0.5);
        int last = (int)(centre + support + 0.5);
        if (first < 0) {
            first = 0;
        }
        if (last > in_size) {
            last = in_size;
        }
        int count = last - first;
        double total = 0.0;
        for (int k = 0; k < count; k++) {
            raw[k] = triangle((k + first - centre + 0.5) * inverse);
            total += raw[k];
        }
        int32_t *weights = taps->weights + (size_t)out * ksize;
        for (int k = 0; k < count; k++) {
            double w = total != 0.0 ? raw[k] / total : raw[k];
            double fixed = w * (1 << PRECISION_BITS);
            weights[k] = (int32_t)(w < 0 ? fixed - 0.5 : fixed + 0.5);
        }
        taps->start[out] = first;
        taps->count[out] = count;
    }
    free(raw);
    return 0;
}

#define STRIP 8 /* rows resampled together by the x pass: 8 RGBX pixels = one 32-byte load a tap */

/* The kernels use AVX2 (8 int32 lanes, vpmulld) on x86-64 CPUs that have it; everywhere else
 * available() is False and image_processing.py keeps Pillow's resize, which is as exact. */
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define HAVE_KERNELS 1
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2")))

/* 8 bytes as 8 int32 lanes, times the weight, added to the sums. */
AVX2 static inline __m256i add_weighted(__m256i sums, const uint8_t *bytes, __m256i weight) {
    __m256i values = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)bytes));
    return _mm256_add_epi32(sums, _mm256_mullo_epi32(values, weight));
}

/* Transpose 8 rows of 8 RGBX pixels (rows `stride` bytes apart) into 8 columns of 8 rows, each
 * 32 contiguous bytes at `out` + 32 * x: the usual 8x8 transpose of 32-bit lanes. */
AVX2 static inline void transpose8x8(const uint8_t *in, Py_ssize_t stride, uint32_t *out) {
    __m256i r[8], t[8], u[8];
    for (int i = 0; i < 8; i++) {
        r[i] = _mm256_loadu_si256((const __m256i *)(in + i * stride));
    }
    for (int i = 0; i < 8; i += 2) { /* pairs of rows, 32-bit interleave */
        t[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) { /* quads of rows, 64-bit interleave */
        u[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 4; i++) { /* u[i]: rows 0-3 of pixels i, i + 4; u[i + 4]: rows 4-7 */
        _mm256_store_si256((__m256i *)(out + 8 * i), _mm256_permute2x128_si256(u[i], u[i + 4], 0x20));
        _mm256_store_si256((__m256i *)(out + 8 * (i + 4)), _mm256_permute2x128_si256(u[i], u[i + 4], 0x31));
    }
}

/* The x pass: resample RGBX rows along x into RGBX rows, out + row * out_stride + 4 * o.
 * Rows are taken STRIP at a time and transposed into `tile` (in_width * STRIP pixels, 32-byte
 * aligned), so that a tap of an output pixel is one contiguous 32-byte read for all STRIP rows and
 * channels: the weights of an output column are shared by every row. */
AVX2 static void resample_x(const uint8_t *in, Py_ssize_t in_stride, int in_width, int rows, const Taps *taps,
                            uint8_t *out, Py_ssize_t out_stride, uint32_t *tile) {
    const __m256i half = _mm256_set1_epi32(HALF);
    /* After the two packs below the 8 rows sit in the order 0 2 4 6 1 3 5 7. */
    const __m256i row_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    uint32_t pixels[STRIP] __attribute__((aligned(32)));
    for (int row0 = 0; row0 < rows; row0 += STRIP) {
        int strip = rows - row0 < STRIP ? rows - row0 : STRIP;
        const uint8_t *block = in + (Py_ssize_t)row0 * in_stride;
        int x = 0;
        if (strip == STRIP) {
            for (; x + 8 <= in_width; x += 8) {
                transpose8x8(block + 4 * x, in_stride, tile + (Py_ssize_t)x * STRIP);
            }
        }
        for (; x < in_width; x++) { /* short last strip: repeat its last row, not stored */
            for (int r = 0; r < STRIP; r++) {
                memcpy(tile + (Py_ssize_t)x * STRIP + r, block + (r < strip ? r : strip - 1) * in_stride + 4 * x, 4);
            }
        }
        for (int o = 0; o < taps->size; o++) {
            const int32_t *w = taps->weights + (size_t)o * taps->ksize;
            const uint8_t *column = (const uint8_t *)(tile + (Py_ssize_t)taps->start[o] * STRIP);
            __m256i s0 = half, s1 = half, s2 = half, s3 = half; /* rows 0-1, 2-3, 4-5, 6-7 */
            for (int k = 0; k < taps->count[o]; k++, column += 4 * STRIP) {
                __m256i weight = _mm256_set1_epi32(w[k]);
                s0 = add_weighted(s0, column, weight);
                s1 = add_weighted(s1, column + 8, weight);
                s2 = add_weighted(s2, column + 16, weight);
                s3 = add_weighted(s3, column + 24, weight);
            }
            /* Saturating packs int32 -> uint16 -> uint8 clamp to 0..255. */
            __m256i words01 = _mm256_packus_epi32(_mm256_srai_epi32(s0, PRECISION_BITS),
                                                  _mm256_srai_epi32(s1, PRECISION_BITS));
            __m256i words23 = _mm256_packus_epi32(_mm256_srai_epi32(s2, PRECISION_BITS),
                                                  _mm256_srai_epi32(s3, PRECISION_BITS));
            __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(words01, words23), row_order);
            _mm256_store_si256((__m256i *)pixels, bytes);
            uint8_t *target = out + (Py_ssize_t)row0 * out_stride + 4 * (Py_ssize_t)o;
            for (int r = 0; r < strip; r++) {
                memcpy(target + r * out_stride, pixels + r, 4);
            }
        }
    }
}

/* Split RGBX rows (`width` pixels, rows `in_stride` bytes apart) into three planes. */
AVX2 static void split_channels(const uint8_t *in, Py_ssize_t in_stride, int width, int rows, uint8_t *const out[3],
                                Py_ssize_t out_stride) {
    /* Within each 128-bit lane: the 4 R bytes, the 4 G, the 4 B, the 4 X; then lanes merged. */
    const __m256i gather = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0, 4, 8, 12, 1, 5, 9,
                                            13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m256i merge = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int row = 0; row < rows; row++) {
        const uint8_t *line = in + row * in_stride;
        uint8_t *r = out[0] + row * out_stride, *g = out[1] + row * out_stride, *b = out[2] + row * out_stride;
        int x = 0;
        for (; x + 8 <= width; x += 8) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(line + 4 * x));
            v = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(v, gather), merge);
            int64_t channel[4];
            _mm256_storeu_si256((__m256i *)channel, v);
            memcpy(r + x, channel, 8);
            memcpy(g + x, channel + 1, 8);
            memcpy(b + x, channel + 2, 8);
        }
        for (; x < width; x++) {
            r[x] = line[4 * x];
            g[x] = line[4 * x + 1];
            b[x] = line[4 * x + 2];
        }
    }
}

/* The y pass over `bytes` bytes per row (RGBX rows: 4 * width; a plane: width): output row o =
 * weighted sum of input rows, 16 bytes at a time, the sums kept in registers across the taps. */
AVX2 static void resample_y(const uint8_t *in, Py_ssize_t in_stride, int bytes, const Taps *taps, uint8_t *out,
                            Py_ssize_t out_stride) {
    const __m256i half = _mm256_set1_epi32(HALF);
    int blocks = bytes / 16;
    for (int o = 0; o < taps->size; o++) {
        const int32_t *w = taps->weights + (size_t)o * taps->ksize;
        const uint8_t *first = in + (Py_ssize_t)taps->start[o] * in_stride;
        int count = taps->count[o];
        uint8_t *target = out + (Py_ssize_t)o * out_stride;
        for (int b = 0; b < blocks; b++) {
            __m256i low = half, high = half;
            const uint8_t *line = first + 16 * b;
            for (int k = 0; k < count; k++, line += in_stride) {
                __m256i weight = _mm256_set1_epi32(w[k]);
                low = add_weighted(low, line, weight);
                high = add_weighted(high, line + 8, weight);
            }
            /* Saturating packs int32 -> uint16 -> uint8 clamp to 0..255; the 64-bit permute undoes
             * the per-128-bit-lane interleave of the first pack. */
            __m256i words = _mm256_packus_epi32(_mm256_srai_epi32(low, PRECISION_BITS),
                                                _mm256_srai_epi32(high, PRECISION_BITS));
            words = _mm256_permute4x64_epi64(words, 0xD8);
            __m128i packed = _mm_packus_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
            _mm_storeu_si128((__m128i *)(target + 16 * b), packed);
        }
        for (int x = 16 * blocks; x < bytes; x++) {
            int32_t sum = HALF;
            for (int k = 0; k < count; k++) {
                sum += first[(Py_ssize_t)k * in_stride + x] * w[k];
            }
            sum >>= PRECISION_BITS;
            target[x] = (uint8_t)(sum < 0 ? 0 : (sum > 255 ? 255 : sum));
        }
    }
}
#else
#define HAVE_KERNELS 0
#endif

static int kernels_available(void) {
#if HAVE_KERNELS
    return __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

/* render_canvas(source, width, height, stride, transposed, out_width, out_height, before, canvas)
 *
 * source: the image's pixels as 4 bytes R G B X (Pillow's own memory layout for RGB), rows
 *   `stride` bytes apart; width x height its size.
 * transposed, out_width, out_height: the reference's geometry in its landscape frame: portrait
 *   images (transposed) are resized to out_width along their y axis and out_height along x.
 * canvas: writable (3, H, W) uint8 in the image's own orientation, W x H = out_width x padded
 *   height (landscape) or padded height x out_width (portrait); the resized image is written
 *   `before` rows (landscape) or columns (portrait) in, the rest is white. */
static PyObject *render_canvas(PyObject *self, PyObject *args) {
    Py_buffer source, canvas;
    int width, height, transposed, out_width, out_height, before;
    Py_ssize_t stride;
    if (!PyArg_ParseTuple(args, "y*iinpiiiw*", &source, &width, &height, &stride, &transposed, &out_width,
                          &out_height, &before, &canvas)) {
        return NULL;
    }
    PyObject *result = NULL;
    Taps first = {0}, second = {0};
    uint8_t *scratch = NULL;
    Py_ssize_t plane = canvas.len / 3;
    /* Canvas sides in the image's own orientation; `padded` is the side that gets white. */
    Py_ssize_t across = out_width > 0 ? plane / out_width : 0;
    int rows = transposed ? out_width : (int)across, cols = transposed ? (int)across : out_width;
    int padded = transposed ? cols : rows;
    if (!kernels_available()) {
        PyErr_SetString(PyExc_RuntimeError, "render_canvas needs an x86-64 CPU with AVX2; check available() first");
        goto done;
    }
    if (width < 1 || height < 1 || out_width < 1 || out_height < 1 || before < 0 || stride < 4 * (Py_ssize_t)width ||
        source.len < (Py_ssize_t)(height - 1) * stride + 4 * (Py_ssize_t)width || canvas.len % 3 != 0 ||
        (Py_ssize_t)rows * cols != plane || padded < before + out_height) {
        PyErr_SetString(PyExc_ValueError, "render_canvas: inconsistent sizes");
        goto done;
    }
    /* The first pass runs along x of the landscape frame: the image's x, or its y if portrait. */
    if (taps_init(&first, transposed ? height : width, out_width) != 0 ||
        taps_init(&second, transposed ? width : height, out_height) != 0) {
        PyErr_NoMemory();
        goto done;
    }
    /* RGBX rows after the first pass (landscape: height x out_width; portrait: out_width x width)
     * and after the second (out_height x out_width; portrait: out_width x out_height), then the
     * x pass's tile. */
    int widest = width > out_width ? width : out_width;
    size_t middle = (size_t)4 * out_width * (transposed ? width : height);
    size_t resized = (size_t)4 * out_width * out_height;
    size_t tile = (size_t)4 * STRIP * widest;
    size_t middle_end = (middle + 63) / 64 * 64, resized_end = middle_end + (resized + 63) / 64 * 64;
    scratch = aligned_alloc(64, resized_end + (tile + 63) / 64 * 64);
    if (!scratch) {
        PyErr_NoMemory();
        goto done;
    }
#if HAVE_KERNELS
    Py_BEGIN_ALLOW_THREADS;
    const uint8_t *in = source.buf;
    uint8_t *out = canvas.buf, *after_first = scratch, *after_second = scratch + middle_end;
    uint32_t *tile_at = (uint32_t *)(scratch + resized_end);
    memset(out, WHITE, (size_t)canvas.len);
    if (!transposed) {
        resample_x(in, stride, width, height, &first, after_first, 4 * (Py_ssize_t)out_width, tile_at);
        resample_y(after_first, 4 * (Py_ssize_t)out_width, 4 * out_width, &second, after_second,
                   4 * (Py_ssize_t)out_width);
        uint8_t *planes[3] = {out + (Py_ssize_t)before * cols, out + plane + (Py_ssize_t)before * cols,
                              out + 2 * plane + (Py_ssize_t)before * cols};
        split_channels(after_second, 4 * (Py_ssize_t)out_width, out_width, out_height, planes, cols);
    } else {
        resample_y(in, stride, 4 * width, &first, after_first, 4 * (Py_ssize_t)width);
        resample_x(after_first, 4 * (Py_ssize_t)width, width, out_width, &second, after_second,
                   4 * (Py_ssize_t)out_height, tile_at);
        uint8_t *planes[3] = {out + before, out + plane + before, out + 2 * plane + before};
        split_channels(after_second, 4 * (Py_ssize_t)out_height, out_height, out_width, planes, cols);
    }
    Py_END_ALLOW_THREADS;
#endif
    result = Py_NewRef(Py_None);
done:
    free(scratch);
    taps_free(&first);
    taps_free(&second);
    PyBuffer_Release(&source);
    PyBuffer_Release(&canvas);
    return result;
}

/* normalise_crops(red, green, blue, height, width, table, out)
 *
 * red, green, blue: (height, width) uint8 planes of a canvas, sides multiples of 336. table:
 * (3, 256) float32, the normalised value of every byte per channel (computed by the caller with
 * the reference's own float32 operations, so a lookup is bit-identical to computing). out:
 * writable float32 (rows * cols, 3, 336, 336), the crops row-major. Plain C: no AVX2 needed. */
static PyObject *normalise_crops(PyObject *self, PyObject *args) {
    Py_buffer planes[3], table, out;
    int height, width;
    if (!PyArg_ParseTuple(args, "y*y*y*iiy*w*", &planes[0], &planes[1], &planes[2], &height, &width, &table, &out)) {
        return NULL;
    }
    PyObject *result = NULL;
    int rows = height / CROP, cols = width / CROP;
    Py_ssize_t area = (Py_ssize_t)height * width;
    if (height < 0 || width < 0 || height % CROP || width % CROP || planes[0].len != area || planes[1].len != area ||
        planes[2].len != area || table.len != 3 * 256 * (Py_ssize_t)sizeof(float) ||
        out.len < (Py_ssize_t)rows * cols * 3 * CROP * CROP * (Py_ssize_t)sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "normalise_crops: inconsistent sizes");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS;
    const float *lookup = table.buf;
    float *target = out.buf;
    for (int crop = 0; crop < rows * cols; crop++) {
        int top = (crop / cols) * CROP, left = (crop % cols) * CROP;
        for (int c = 0; c < 3; c++) {
            const float *values = lookup + 256 * c;
            const uint8_t *plane = (const uint8_t *)planes[c].buf;
            for (int y = 0; y < CROP; y++) {
                const uint8_t *line = plane + (Py_ssize_t)(top + y) * width + left;
                for (int x = 0; x < CROP; x++) {
                    target[x] = values[line[x]];
                }
                target += CROP;
            }
        }
    }
    Py_END_ALLOW_THREADS;
    result = Py_NewRef(Py_None);
done:
    for (int c = 0; c < 3; c++) {
        PyBuffer_Release(&planes[c]);
    }
    PyBuffer_Release(&table);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *available(PyObject *self, PyObject *unused) { return PyBool_FromLong(kernels_available()); }

static PyMethodDef methods[] = {
    {"available", available, METH_NOARGS, "Whether this CPU runs the kernels (x86-64 with AVX2)."},
    {"render_canvas", render_canvas, METH_VARARGS, "Pillow-exact bilinear resize into a white-padded planar canvas."},
    {"normalise_crops", normalise_crops, METH_VARARGS, "Local crops of a planar uint8 canvas through a float32 table."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_hd_canvas", NULL, -1, methods};

PyMODINIT_FUNC PyInit__hd_canvas(void) { return PyModule_Create(&module); }
