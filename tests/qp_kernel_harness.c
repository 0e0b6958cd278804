/* Memory check of the QP kernel (tests/test_qp_native.py builds it with AddressSanitizer + UBSan and
   -DQP_IPM_SANITIZE, which puts poisoned guards between the kernel's scratch vectors): random reduced QPs of
   awkward sizes (k, m not multiples of the vector width or of 4; per-instance and shared matrices), solved from
   the cold start, warm-started from their solutions and from a plain interior point (the warm-start path), on a
   slice [1, B) of the batch, and an infeasible instance (the diverging exit). Prints "ok" when every solve
   returned the expected status; any memory error aborts it with the sanitizer's report. */
#include QP_IPM_SOURCE
#include <stdio.h>

static double rnd(void) { return rand() / (double)RAND_MAX - 0.5; }

static int expect(const char *what, int64_t k, int64_t m, int64_t b0, int64_t b1, const int64_t *st,
                  const int64_t *lok, int64_t want) {
    for (int64_t b = b0; b < b1; ++b)
        if (st[b] != want || (want == ST_CONVERGED && !lok[b])) {
            printf("%s k=%ld m=%ld instance %ld: status %ld (want %ld) lok %ld\n", what, (long)k, (long)m, (long)b,
                   (long)st[b], (long)want, (long)lok[b]);
            return 1;
        }
    return 0;
}

int main(void) {
    int sizes[][2] = {{1, 1}, {3, 5}, {5, 9}, {7, 17}, {8, 16}, {13, 3}, {40, 100}};
    for (int si = 0; si < 7; ++si) {
        int64_t k = sizes[si][0], m = sizes[si][1], B = 3;
        double *P = malloc(8 * B * k * k), *c = malloc(8 * B * k), *F = malloc(8 * B * m * k), *g = malloc(8 * B * m);
        double *sh = malloc(8 * B), *qn = malloc(8 * B), *hn = malloc(8 * B), *yd = malloc(8 * B), *zd = malloc(8 * B);
        double *u = malloc(8 * B * k), *s = malloc(8 * B * m), *lam = malloc(8 * B * m), *L = malloc(8 * B * k * k);
        int64_t *it = malloc(8 * B), *pol = malloc(8 * B), *st = malloc(8 * B), *lok = malloc(8 * B);
        for (int64_t b = 0; b < B; b++) {
            double *Pb = P + b * k * k;
            for (int64_t a = 0; a < k; a++)
                for (int64_t e = 0; e < k; e++) Pb[a * k + e] = (a == e) ? 1.0 : 0.0;
            for (int64_t i = 0; i < m * k; i++) F[b * m * k + i] = rnd();
            for (int64_t a = 0; a < k; a++) c[b * k + a] = rnd();
            for (int64_t i = 0; i < m; i++) {
                double v = 0;
                for (int64_t a = 0; a < k; a++) v += F[b * m * k + i * k + a] * 0.1;
                g[b * m + i] = v + 0.5 + rnd() * 0.4;
            }
            sh[b] = 1e-12, qn[b] = 1.5, hn[b] = 1.5, yd[b] = 1e3, zd[b] = 1e6;
        }
        Options o = {k, m, 50, 1, 2, 0, 1e-10, 1.9e-12, 0.99, 0, 0, 1e-6};
        doubleopt_qp_ipm(&o, 0, B, P, k * k, c, F, m * k, g, sh, qn, hn, yd, zd, u, s, lam, it, pol, st, L, lok);
        if (expect("cold", k, m, 0, B, st, lok, ST_CONVERGED)) return 1;
        /* warm start from the solutions (s, lam floored as the Python side does) */
        Options w = o;
        w.warm = 1;
        for (int64_t i = 0; i < B * m; ++i) s[i] = fmax(s[i], 1e-10), lam[i] = fmax(lam[i], 1e-10);
        doubleopt_qp_ipm(&w, 0, B, P, k * k, c, F, m * k, g, sh, qn, hn, yd, zd, u, s, lam, it, pol, st, L, lok);
        if (expect("warm from the solution", k, m, 0, B, st, lok, ST_CONVERGED)) return 1;
        /* warm start from a plain interior point, without the polish, on the slice [1, B) */
        w.polish_below = 0.0;
        for (int64_t i = 0; i < B * k; ++i) u[i] = 0.0;
        for (int64_t i = 0; i < B * m; ++i) s[i] = 1.0, lam[i] = 1.0;
        doubleopt_qp_ipm(&w, 1, B, P, k * k, c, F, m * k, g, sh, qn, hn, yd, zd, u, s, lam, it, pol, st, L, lok);
        if (expect("warm from u = 0, slice [1, B)", k, m, 1, B, st, lok, ST_CONVERGED)) return 1;
        /* shared P and F (stride 0), cold and warm */
        doubleopt_qp_ipm(&o, 0, B, P, 0, c, F, 0, g, sh, qn, hn, yd, zd, u, s, lam, it, pol, st, L, lok);
        if (expect("shared", k, m, 0, 1, st, lok, ST_CONVERGED)) return 1;
        w.polish_below = o.polish_below;
        doubleopt_qp_ipm(&w, 0, 1, P, 0, c, F, 0, g, sh, qn, hn, yd, zd, u, s, lam, it, pol, st, L, lok);
        if (expect("shared warm", k, m, 0, 1, st, lok, ST_CONVERGED)) return 1;
        free(P), free(c), free(F), free(g), free(sh), free(qn), free(hn), free(yd), free(zd);
        free(u), free(s), free(lam), free(L), free(it), free(pol), free(st), free(lok);
    }
    { /* infeasible: x_0 <= -1 and -x_0 <= -1 (with k = 3 free coordinates): the multipliers diverge */
        int64_t k = 3, m = 2;
        double P[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1}, c[3] = {0.1, -0.2, 0.3}, F[6] = {1, 0, 0, -1, 0, 0}, g[2] = {-1, -1};
        double one[1] = {1.0}, yd[1] = {1e3}, zd[1] = {1e6}, tiny[1] = {1e-12}, u[3], s[2], lam[2], L[9];
        int64_t it[1], pol[1], st[1], lok[1];
        Options o = {k, m, 50, 1, 2, 0, 1e-10, 1.9e-12, 0.99, 0, 0, 1e-6};
        doubleopt_qp_ipm(&o, 0, 1, P, 0, c, F, 0, g, tiny, one, one, yd, zd, u, s, lam, it, pol, st, L, lok);
        if (expect("infeasible", k, m, 0, 1, st, lok, ST_DIVERGED)) return 1;
    }
    printf("ok\n");
    return 0;
}
