/* Memory check of the QP kernel (tests/test_qp_native.py builds it with AddressSanitizer + UBSan and
   -DQP_IPM_SANITIZE, which puts poisoned guards between the kernel's scratch vectors): random reduced QPs of
   awkward sizes (k, m not multiples of the vector width or of 4; per-instance and shared matrices), solved from
   the cold start, warm-started from their solutions and from a plain interior point (the warm-start path), on a
   slice [1, B) of the batch, and an infeasible instance (the diverging exit). Prints "ok" when every solve
   returned the expected status; any memory error aborts it with the sanitizer's report.
   Built with -DQP_HARNESS_THREADS=T (and -fsanitize=thread) it instead runs the kernel from T threads at once on
   disjoint slices of one batch, as the Python wrapper does (shared and per-instance matrices, cold then warm), and
   checks the results are bitwise those of one sequential call. */
#include QP_IPM_SOURCE
#include <stdio.h>

static double rnd(void) { return rand() / (double)RAND_MAX - 0.5; }

/* B random instances: P = I, F Gaussian-ish, g = F (0.1, ..., 0.1) + slack in [0.3, 0.7] (strictly feasible) */
static void fill(int64_t k, int64_t m, int64_t B, double *P, double *c, double *F, double *g, double *sh, double *qn,
                 double *hn, double *yd, double *zd) {
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
}

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

#ifdef QP_HARNESS_THREADS
#include <pthread.h>

typedef struct {
    const Options *o;
    int64_t b0, b1, sP, sF;
    const double *P, *c, *F, *g, *sh, *qn, *hn, *yd, *zd;
    double *u, *s, *lam, *L;
    int64_t *it, *pol, *st, *lok;
} Job;

static void *run_job(void *arg) {
    Job *j = arg;
    doubleopt_qp_ipm(j->o, j->b0, j->b1, j->P, j->sP, j->c, j->F, j->sF, j->g, j->sh, j->qn, j->hn, j->yd, j->zd,
                     j->u, j->s, j->lam, j->it, j->pol, j->st, j->L, j->lok);
    return NULL;
}

int main(void) {
    enum { T = QP_HARNESS_THREADS };
    const int64_t k = 13, m = 29, B = 4 * T;
    double *P = malloc(8 * B * k * k), *c = malloc(8 * B * k), *F = malloc(8 * B * m * k), *g = malloc(8 * B * m);
    double *sh = malloc(8 * B), *qn = malloc(8 * B), *hn = malloc(8 * B), *yd = malloc(8 * B), *zd = malloc(8 * B);
    double *out[2][4]; /* [sequential, threaded] x (u, s, lam, L) */
    int64_t *iout[2][4]; /* (iters, polished, status, lok) */
    for (int r = 0; r < 2; ++r) {
        out[r][0] = malloc(8 * B * k), out[r][1] = malloc(8 * B * m), out[r][2] = malloc(8 * B * m);
        out[r][3] = malloc(8 * B * k * k);
        for (int q = 0; q < 4; ++q) iout[r][q] = malloc(8 * B);
    }
    fill(k, m, B, P, c, F, g, sh, qn, hn, yd, zd);
    for (int shared = 0; shared < 2; ++shared) {
        const int64_t sP = shared ? 0 : k * k, sF = shared ? 0 : m * k;
        for (int warm = 0; warm < 2; ++warm) {
            Options o = {k, m, 50, 1, 2, warm, 1e-10, 1.9e-12, 0.99, 0, 0, 1e-6};
            if (warm) /* start both from the sequential cold results (halved: off the solution) */
                for (int r = 1; r >= 0; --r) {
                    for (int64_t i = 0; i < B * k; ++i) out[r][0][i] = 0.5 * out[0][0][i];
                    for (int64_t i = 0; i < B * m; ++i) out[r][1][i] = 1.0, out[r][2][i] = 1.0;
                }
            Job seq = {&o, 0, B, sP, sF, P, c, F, g, sh, qn, hn, yd, zd, out[0][0], out[0][1], out[0][2], out[0][3],
                       iout[0][0], iout[0][1], iout[0][2], iout[0][3]};
            run_job(&seq);
            pthread_t th[T];
            Job jobs[T];
            for (int t = 0; t < T; ++t) {
                jobs[t] = seq;
                jobs[t].b0 = B * t / T, jobs[t].b1 = B * (t + 1) / T;
                jobs[t].u = out[1][0], jobs[t].s = out[1][1], jobs[t].lam = out[1][2], jobs[t].L = out[1][3];
                jobs[t].it = iout[1][0], jobs[t].pol = iout[1][1], jobs[t].st = iout[1][2], jobs[t].lok = iout[1][3];
                if (pthread_create(&th[t], NULL, run_job, &jobs[t]) != 0) return 2;
            }
            for (int t = 0; t < T; ++t) pthread_join(th[t], NULL);
            const int64_t sizes[4] = {B * k, B * m, B * m, B * k * k};
            for (int q = 0; q < 4; ++q)
                if (memcmp(out[0][q], out[1][q], 8 * sizes[q]) != 0 || memcmp(iout[0][q], iout[1][q], 8 * B) != 0) {
                    printf("shared=%d warm=%d: output %d differs between the threaded and the sequential run\n",
                           shared, warm, q);
                    return 1;
                }
            if (expect("threaded", k, m, 0, B, iout[1][2], iout[1][3], ST_CONVERGED)) return 1;
        }
    }
    printf("ok\n");
    return 0;
}
#else
int main(void) {
    int sizes[][2] = {{1, 1}, {3, 5}, {5, 9}, {7, 17}, {8, 16}, {13, 3}, {40, 100}};
    for (int si = 0; si < 7; ++si) {
        int64_t k = sizes[si][0], m = sizes[si][1], B = 3;
        double *P = malloc(8 * B * k * k), *c = malloc(8 * B * k), *F = malloc(8 * B * m * k), *g = malloc(8 * B * m);
        double *sh = malloc(8 * B), *qn = malloc(8 * B), *hn = malloc(8 * B), *yd = malloc(8 * B), *zd = malloc(8 * B);
        double *u = malloc(8 * B * k), *s = malloc(8 * B * m), *lam = malloc(8 * B * m), *L = malloc(8 * B * k * k);
        int64_t *it = malloc(8 * B), *pol = malloc(8 * B), *st = malloc(8 * B), *lok = malloc(8 * B);
        fill(k, m, B, P, c, F, g, sh, qn, hn, yd, zd);
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
#endif
