/* Sampling's selections with torch's results (portable C: compiled into both libraries): the k largest scores
   of each row (sampling._top_k_top_p), and torch.multinomial's draw without replacement on torch's own CPU
   generator, taking the log only where it can matter.

   torch.multinomial(p, k) without replacement draws q ~ Exp(1) for EVERY entry of p (`exponential_`: a double
   u from two consecutive mt19937 outputs hi, lo: u = ((hi << 32 | lo) & (2^53 - 1)) · 2^-53, then
   q = (float)(-log(1 - u))) and takes the k largest p / q. Where p is 0 the ratio is 0 whatever q is, so
   only the generator's advance matters there: the twist of its state, no tempering, no log.

   The generator state is the byte image torch.Generator.get_state() returns (ATen's legacy layout: int32 `left`
   at byte 8, uint64 `next` at 16, the 624 state words as uint64 from 24); it is advanced in place exactly as
   torch advances it, and the caller hands it back with set_state(). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MT_N 624
#define MT_M 397

static inline uint32_t mt_twist(uint32_t u, uint32_t v) {
    return (((u & 0x80000000u) | (v & 0x7fffffffu)) >> 1) ^ ((v & 1u) ? 0x9908b0dfu : 0u);
}

static void mt_next_state(uint32_t *s) {
    int i = 0;
    for (; i < MT_N - MT_M; i++) s[i] = s[i + MT_M] ^ mt_twist(s[i], s[i + 1]);
    for (; i < MT_N - 1; i++) s[i] = s[i + MT_M - MT_N] ^ mt_twist(s[i], s[i + 1]);
    s[MT_N - 1] = s[MT_M - 1] ^ mt_twist(s[MT_N - 1], s[0]);
}

static inline uint32_t mt_temper(uint32_t y) {
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    return y ^ (y >> 18);
}

/* The k largest of the `count` positive ratios at idx (ascending), descending, as columns within their row ->
   out; 0, or 2 where torch's ranking must decide (fewer than k positives, or a tie among the k or at the k-th:
   torch's order for equal values is its own). */
static int pick_row(const float *ratio, const int32_t *idx, long count, int k, long row_start, int64_t *out) {
    float best[64];
    int32_t where[64];
    int have = 0;
    float rejected = 0.0f;                 /* the largest ratio left out */
    if (count < k || k > 64) return 2;
    for (long a = 0; a < count; a++) {
        float v = ratio[idx[a]];
        if (have == k && !(v > best[k - 1])) {
            rejected = v > rejected ? v : rejected;
            continue;
        }
        if (have == k) rejected = best[k - 1] > rejected ? best[k - 1] : rejected;
        int j = have < k ? have++ : k - 1;
        for (; j > 0 && best[j - 1] < v; j--) {
            best[j] = best[j - 1];
            where[j] = where[j - 1];
        }
        best[j] = v;
        where[j] = idx[a];
    }
    for (int j = 1; j < k; j++)
        if (best[j] == best[j - 1]) return 2;
    if (rejected == best[k - 1]) return 2;
    for (int j = 0; j < k; j++) out[j] = where[j] - row_start;
    return 0;
}

/* ratio[i] = p[i] / q[i] where p[i] > 0, else 0, for p (rows, cols) row-major, q the draws torch's
   exponential_ would make on the generator whose state image is `state` (advanced past all rows·cols draws);
   with k > 0 also each row's k largest ratios' columns, descending -> picked (rows, k).
   Returns 0 on success; 2 when the ratios are written and the state advanced but torch must rank them (see
   pick_row); 1 (state untouched) when p is not a distribution torch.multinomial takes (NaN, inf, a negative
   entry, a row without a positive one), or some u is 0 (probability 2^-53 a draw: torch's ratio is NaN
   there; the caller lets torch draw), or the state image is not one torch writes. */
int itf_exponential_ratio(uint8_t *state, const float *p, long rows, long cols, int k, float *ratio, int64_t *picked) {
    int32_t left;
    uint64_t next;
    memcpy(&left, state + 8, 4);
    memcpy(&next, state + 16, 8);
    long n = rows * cols, m = 0;
    if (left < 1 || left > MT_N || next > MT_N || n <= 0 || n > INT32_MAX) return 1;
    int32_t *positives = malloc(n * sizeof(int32_t));   /* the entries where p > 0, ascending */
    long *row_first = malloc((rows + 1) * sizeof(long)); /* each row's first one in that list */
    if (!positives || !row_first) {
        free(positives);
        free(row_first);
        return 1;
    }
    int bad = 0;
    for (long r = 0; r < rows; r++) {                     /* torch's checks, branch-free */
        long first = row_first[r] = m;
        for (long c = r * cols; c < (r + 1) * cols; c++) {
            float x = p[c];
            bad |= !(x >= 0.0f) | (x == INFINITY);
            positives[m] = (int32_t)c;
            m += x > 0.0f;
        }
        bad |= m == first;
    }
    uint32_t s[MT_N];
    for (int j = 0; j < MT_N; j++) {
        uint64_t w;
        memcpy(&w, state + 24 + 8 * j, 8);
        s[j] = (uint32_t)w;
    }
    memset(ratio, 0, n * sizeof(float));
    long total = 2 * n, t = 0, a = 0;   /* outputs wanted; t: outputs taken so far; a: next positive entry */
    uint32_t last = 0;                   /* the tempered last output of the previous chunk */
    while (!bad && t < total) {
        if (left == 1) {                 /* torch: --left == 0 -> twist, then read s[0] */
            mt_next_state(s);
            left = MT_N + 1;
            next = 0;
        }
        long take = left - 1 < total - t ? left - 1 : total - t;
        const uint32_t *w = s + next;
        int zero = 0;
        for (long j = 0; j < take; j++) zero |= w[j] == 0;
        bad |= zero;                     /* tempering maps only 0 to 0: some u may be 0, let torch draw */
        for (; a < m && 2L * positives[a] + 1 < t + take; a++) {
            long c = positives[a], lo = 2 * c + 1 - t;   /* the draw's outputs: hi = 2c, lo = 2c + 1 */
            uint32_t hi = lo > 0 ? mt_temper(w[lo - 1]) : last;
            uint64_t bits = (((uint64_t)hi << 32) | mt_temper(w[lo])) & ((1ull << 53) - 1);
            double u = (double)bits * (1.0 / 9007199254740992.0);
            ratio[c] = p[c] / (float)(-1.0 * log(1.0 - u));
        }
        last = mt_temper(w[take - 1]);
        t += take;
        next += take;
        left -= take;
    }
    row_first[rows] = m;
    int rc = bad;
    for (long r = 0; !bad && k > 0 && r < rows; r++)
        rc |= pick_row(ratio, positives + row_first[r], row_first[r + 1] - row_first[r], k, r * cols, picked + r * k);
    free(positives);
    free(row_first);
    if (bad) return 1;
    memcpy(state + 8, &left, 4);
    memcpy(state + 16, &next, 8);
    for (int j = 0; j < MT_N; j++) {
        uint64_t w = s[j];
        memcpy(state + 24 + 8 * j, &w, 8);
    }
    return rc;
}

/* Each row's k largest of x (rows, cols), descending -> vals, idx (rows, k). Returns 0, or 1 where the ranking
   is not unique (two equal among a row's k, which includes fewer than k finite scores) or a row holds NaN: the
   caller then asks torch.topk, whose order for equal values is its own. */
int itf_top_scores(const float *x, long rows, long cols, int k, float *vals, int64_t *idx) {
    if (k < 1 || k > cols) return 1;
    for (long r = 0; r < rows; r++) {
        const float *row = x + r * cols;
        float *v = vals + r * k;
        int64_t *w = idx + r * k;
        int have = 0, nan = 0;
        float floor = -INFINITY;             /* v[k - 1] once k are held: what a newcomer must beat */
        for (long c0 = 0; c0 < cols; c0 += 16) {
            long end = c0 + 16 < cols ? c0 + 16 : cols;
            int any = have < k;
            for (long c = c0; c < end; c++) {   /* a block of 16 at once: most hold nothing to insert */
                nan |= row[c] != row[c];
                any |= row[c] > floor;
            }
            if (!any) continue;
            for (long c = c0; c < end; c++) {
                float s = row[c];
                if (have == k && !(s > floor)) continue;
                int j = have < k ? have++ : k - 1;
                for (; j > 0 && v[j - 1] < s; j--) {
                    v[j] = v[j - 1];
                    w[j] = w[j - 1];
                }
                v[j] = s;
                w[j] = c;
                if (have == k) floor = v[k - 1];
            }
        }
        if (nan) return 1;
        for (int j = 1; j < k; j++)
            if (v[j] == v[j - 1]) return 1;
    }
    return 0;
}
