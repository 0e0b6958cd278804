/* Dense primal-dual interior point (Mehrotra predictor-corrector) for a batch of inequality-form QPs

       min 1/2 u'P u + c'u   s.t.   F u <= g        (P: k x k, F: m x k, per instance, row-major)

   one instance at a time, in cache. doubleopt's QP solver calls it (through ctypes, on slices of the batch
   from several threads) after eliminating the equality constraints (u are null-space coordinates), and
   rebuilds its own state from the result, so every answer is re-checked in PyTorch. The iteration is the
   same as doubleopt.solvers.qp.QP._step: the CVXOPT initial point, the reduced matrix H = P + F'DF + shift I
   (D = lam / s clipped at 1 / delta) factored once per iteration, the predictor, the Mehrotra corrector with
   one step of iterative refinement against the unreduced operator, and the step to the boundary.
   Status per instance: 0 converged (scaled KKT residual <= tol, with the 2-norm of the reduced dual
   residual, which bounds the inf-norm of the full one), 1 iteration budget spent, 2 Cholesky failed,
   3 iterates diverging (left to the caller's infeasibility / unboundedness certificates), 4 non-finite.
   Once the residual is <= polish_below, each iteration first tries the active-set polish (as QP.polish);
   `polished` says which instances ended with it. Each instance also gets the Cholesky factor of its reduced
   matrix at the returned point (for the caller's state and KKT backward).

   Memory: one allocation per call holds every scratch vector (Workspace, carved by workspace_layout). Built with
   -DQP_IPM_SANITIZE (and -fsanitize=address) each vector is followed by a poisoned guard region, and everything
   between the vectors is poisoned too, so AddressSanitizer reports an access one element past (or before) any
   vector, which it could not see inside the one allocation otherwise. -DQP_IPM_INJECT_OVERRUN=<1..3> builds a
   deliberately broken kernel (one read and write one element past a vector: 1 the iterations' dl, 2 the
   transposed F, 3 the polish's up) for the test that the guards catch such a bug.
   Threads: a call keeps no state outside its own workspace and the [b0, b1) slices of the outputs, so concurrent
   calls on disjoint slices (the Python wrapper's split of a batch) are safe; tests/qp_kernel_harness.c checks this
   under ThreadSanitizer, and -DQP_IPM_INJECT_RACE (a counter shared by all calls) is the bug that check must catch. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef QP_IPM_SANITIZE
#include <sanitizer/asan_interface.h> /* ASAN_(UN)POISON_MEMORY_REGION: no-ops without -fsanitize=address */
#define QP_IPM_GUARD 8                /* doubles of poisoned guard before, between and after the vectors */
#define QP_POISON(addr, size) ASAN_POISON_MEMORY_REGION(addr, size)
#define QP_UNPOISON(addr, size) ASAN_UNPOISON_MEMORY_REGION(addr, size)
#else
#define QP_IPM_GUARD 0
#define QP_POISON(addr, size) ((void)(addr), (void)(size))
#define QP_UNPOISON(addr, size) ((void)(addr), (void)(size))
#endif

#ifdef QP_IPM_INJECT_OVERRUN /* the test's deliberate bug: touch element n of a vector of n (same value back) */
#define INJECT_OVERRUN(id, v, n)                                                                                  \
    do {                                                                                                          \
        if (QP_IPM_INJECT_OVERRUN == (id)) {                                                                      \
            volatile double *p_ = (v);                                                                            \
            p_[(n)] = p_[(n)];                                                                                    \
        }                                                                                                         \
    } while (0)
#else
#define INJECT_OVERRUN(id, v, n) ((void)0)
#endif

#ifdef QP_IPM_INJECT_RACE /* the thread-safety test's deliberate bug: state shared by concurrent calls */
static int64_t injected_calls;
#define INJECT_RACE() (++injected_calls)
#else
#define INJECT_RACE() ((void)0)
#endif

#define ST_CONVERGED 0
#define ST_BUDGET 1
#define ST_CHOLESKY 2
#define ST_DIVERGED 3
#define ST_NONFINITE 4
#define ST_NO_MEMORY 5 /* the workspace could not be allocated: nothing computed, outputs not written */

typedef struct {
    int64_t k, m;
    int64_t max_iter;
    int64_t refine;
    int64_t polish_rounds;
    int64_t warm; /* 1: start from the given (u, s, lam) instead of the CVXOPT initial point */
    double tol, delta, step_fraction, ydiv_limit, zdiv_limit, polish_below;
} Options;

static int cholesky(double *L, int64_t k, double *col) { /* lower triangle of L (row-major) in place */
    /* right-looking in panels of (up to) 4 columns: the panel is factored column by column, then each trailing
       row gets one fused update from the 4 panel columns (held contiguously in col: 4 x k doubles) */
    for (int64_t j0 = 0; j0 < k; j0 += 4) {
        const int64_t nb = k - j0 < 4 ? k - j0 : 4;
        for (int64_t c = 0; c < nb; ++c) { /* the panel, unblocked (updates stay inside the panel) */
            const int64_t j = j0 + c;
            double s = L[j * k + j];
            if (!(s > 0.0) || !isfinite(s)) return 1;
            double dj = sqrt(s), inv = 1.0 / dj;
            L[j * k + j] = dj;
            double *cj = col + c * k;
            for (int64_t i = j + 1; i < k; ++i) cj[i] = (L[i * k + j] *= inv);
            for (int64_t i = j + 1; i < k; ++i) { /* columns j+1 .. j0+nb-1 of the panel */
                double *Li = L + i * k;
                const double w = cj[i];
                const int64_t tend = i < j0 + nb - 1 ? i : j0 + nb - 1;
                for (int64_t t = j + 1; t <= tend; ++t) Li[t] -= w * cj[t];
            }
        }
        const int64_t t0 = j0 + nb;
        const double *c0 = col, *c1 = col + k, *c2 = col + 2 * k, *c3 = col + 3 * k;
        for (int64_t i = t0; i < k; ++i) { /* trailing rows: A[i][t] -= sum_c L[i][j0+c] L[t][j0+c], t0 <= t <= i */
            double *Li = L + i * k;
            if (nb == 4) {
                const double w0 = c0[i], w1 = c1[i], w2 = c2[i], w3 = c3[i];
#pragma omp simd
                for (int64_t t = t0; t <= i; ++t) Li[t] -= w0 * c0[t] + w1 * c1[t] + w2 * c2[t] + w3 * c3[t];
            } else {
                for (int64_t c = 0; c < nb; ++c) {
                    const double *cc = col + c * k;
                    const double w = cc[i];
#pragma omp simd
                    for (int64_t t = t0; t <= i; ++t) Li[t] -= w * cc[t];
                }
            }
        }
    }
    return 0;
}

static void chol_solve(const double *L, int64_t k, double *x) { /* x <- (L L')^{-1} x */
    for (int64_t i = 0; i < k; ++i) {
        const double *Li = L + i * k;
        double v = x[i];
#pragma omp simd reduction(- : v)
        for (int64_t t = 0; t < i; ++t) v -= Li[t] * x[t];
        x[i] = v / Li[i];
    }
    for (int64_t i = k - 1; i >= 0; --i) {
        double v = x[i] / L[i * k + i];
        x[i] = v;
        for (int64_t t = 0; t < i; ++t) x[t] -= L[i * k + t] * v; /* column i of L' = row i of L */
    }
}

static void matvec(const double *F, int64_t m, int64_t k, const double *u, double *out) { /* out = F u */
    for (int64_t i = 0; i < m; ++i) {
        const double *Fi = F + i * k;
        double v = 0.0;
#pragma omp simd reduction(+ : v)
        for (int64_t t = 0; t < k; ++t) v += Fi[t] * u[t];
        out[i] = v;
    }
}

static void matvec_t_add(const double *F, int64_t m, int64_t k, const double *v, double *out) { /* out += F'v */
    for (int64_t i = 0; i < m; ++i) {
        const double *Fi = F + i * k;
        double w = v[i];
#pragma omp simd
        for (int64_t t = 0; t < k; ++t) out[t] += w * Fi[t];
    }
}

/* The reduced matrix H = P + F' diag(d) F + shift I (lower triangle) as blocks of dot products over the
   constraints: Ft is F transposed (kp x mp, zero-padded to multiples of 4 rows and VW columns, built once per
   instance), DFt = Ft scaled by d per column; each 4 x 4 block of H keeps 16 vector accumulators in registers. */
#if defined(__AVX512F__)
#define VW 8
#else
#define VW 4
#endif
typedef double vec __attribute__((vector_size(VW * sizeof(double))));

typedef struct {
    int64_t kp, mp;   /* padded sizes */
    double *Ft, *DFt; /* kp x mp each, 64-byte aligned rows */
    double *col;      /* 4 k doubles of scratch for the Cholesky */
} Hessian;

/* Every scratch vector of one call, by name (sizes in the comments), reused by each instance of the call. */
typedef struct {
    Hessian hs;                                       /* Ft, DFt: kp x mp; col: 4 k */
    double *H;                                        /* k x k: the reduced matrix, then its Cholesky factor */
    double *rd, *du, *e;                              /* k each: dual residual, direction, refinement */
    double *Fu, *rp, *d, *ta, *t, *Fdu, *dsa, *dla, *dl; /* m each */
    double *up;                                       /* polish, k */
    double *dp, *lp, *Fup, *sp, *pFdu;                /* polish, m each */
} Workspace;

/* n doubles from the allocation at base (NULL: only count): each vector starts 64-byte aligned after a guard of
   QP_IPM_GUARD doubles; *used counts the doubles taken so far (a multiple of 8) */
static double *take(double *base, size_t *used, int64_t n) {
    const size_t off = *used + QP_IPM_GUARD;
    *used = (off + (size_t)n + 7) / 8 * 8;
    if (base == NULL) return NULL;
    QP_UNPOISON(base + off, (size_t)n * sizeof(double));
    return base + off;
}

/* Carve w's vectors from base (NULL: only count); returns the doubles the allocation needs (a multiple of 8) */
static size_t workspace_layout(Workspace *w, double *base, int64_t k, int64_t m) {
    size_t used = 0;
    const int64_t nh = w->hs.kp * w->hs.mp;
    w->hs.Ft = take(base, &used, nh);
    w->hs.DFt = take(base, &used, nh);
    w->hs.col = take(base, &used, 4 * k);
    w->H = take(base, &used, k * k);
    double **kvec[] = {&w->rd, &w->du, &w->e, &w->up};
    for (size_t i = 0; i < sizeof(kvec) / sizeof(kvec[0]); ++i) *kvec[i] = take(base, &used, k);
    double **mvec[] = {&w->Fu, &w->rp, &w->d, &w->ta, &w->t, &w->Fdu, &w->dsa, &w->dla,
                       &w->dl, &w->dp, &w->lp, &w->Fup, &w->sp, &w->pFdu};
    for (size_t i = 0; i < sizeof(mvec) / sizeof(mvec[0]); ++i) *mvec[i] = take(base, &used, m);
    return used + QP_IPM_GUARD; /* a guard after the last vector too */
}

/* out = F u from the transposed copy: out[i] = sum_a u[a] Ft[a][i], an axpy per column (vectorized over i) */
static void matvec_ft(const Hessian *hs, int64_t m, int64_t k, const double *u, double *out) {
    for (int64_t i = 0; i < m; ++i) out[i] = 0.0;
    for (int64_t a = 0; a < k; ++a) {
        const double *Fa = hs->Ft + a * hs->mp;
        const double w = u[a];
#pragma omp simd
        for (int64_t i = 0; i < m; ++i) out[i] += w * Fa[i];
    }
}

static inline double hsum(vec v) {
    double r = 0.0;
    for (int t = 0; t < VW; ++t) r += v[t];
    return r;
}

static void transpose_padded(const double *F, int64_t m, int64_t k, Hessian *hs) {
    memset(hs->Ft, 0, sizeof(double) * (size_t)(hs->kp * hs->mp));
    memset(hs->DFt, 0, sizeof(double) * (size_t)(hs->kp * hs->mp));
    for (int64_t i = 0; i < m; ++i)
        for (int64_t a = 0; a < k; ++a) hs->Ft[a * hs->mp + i] = F[i * k + a];
    INJECT_OVERRUN(2, hs->Ft, hs->kp * hs->mp);
}

static void form_h(const double *P, const Hessian *hs, const double *d, int64_t m, int64_t k, double shift,
                   double *H) {
    const int64_t kp = hs->kp, mp = hs->mp;
    for (int64_t a = 0; a < k; ++a) {
        const double *Fa = hs->Ft + a * mp;
        double *Da = hs->DFt + a * mp;
        for (int64_t i = 0; i < m; ++i) Da[i] = d[i] * Fa[i];
    }
    for (int64_t a0 = 0; a0 < kp; a0 += 4) {
        for (int64_t b0 = 0; b0 <= a0; b0 += 4) {
            vec acc[4][4];
            memset(acc, 0, sizeof(acc));
            const double *x0 = hs->DFt + a0 * mp, *y0 = hs->Ft + b0 * mp;
            for (int64_t i = 0; i < mp; i += VW) {
                vec x[4], y[4];
                for (int r = 0; r < 4; ++r) {
                    memcpy(&x[r], x0 + r * mp + i, sizeof(vec));
                    memcpy(&y[r], y0 + r * mp + i, sizeof(vec));
                }
                for (int r = 0; r < 4; ++r)
                    for (int c = 0; c < 4; ++c) acc[r][c] += x[r] * y[c];
            }
            for (int r = 0; r < 4; ++r) {
                int64_t a = a0 + r;
                if (a >= k) break;
                for (int c = 0; c < 4; ++c) {
                    int64_t b = b0 + c;
                    if (b > a) break;
                    H[a * k + b] = P[a * k + b] + hsum(acc[r][c]) + (a == b ? shift : 0.0);
                }
            }
        }
    }
}

static int factor(const double *P, const Hessian *hs, const double *d, int64_t m, int64_t k, double shift,
                  double *H) { /* Cholesky of H, with larger shifts (x1e3, three times) where it fails */
    for (int attempt = 0; attempt < 4; ++attempt) {
        form_h(P, hs, d, m, k, shift, H);
        if (cholesky(H, k, hs->col) == 0) return 0;
        shift *= 1e3;
    }
    return 1;
}

static double step_to_boundary(const double *v, const double *dv, int64_t m) {
    double a = 1e30;
    for (int64_t i = 0; i < m; ++i)
        if (dv[i] < 0.0) {
            double r = -v[i] / dv[i];
            if (r < a) a = r;
        }
    return a;
}

static double inf_norm(const double *v, int64_t n) {
    double r = 0.0;
    for (int64_t i = 0; i < n; ++i) r = fmax(r, fabs(v[i]));
    return r;
}

/* scaled KKT residual at (u, s, lam); Fu = F u; rd, rp are outputs */
static double residual(const double *P, const double *c, const double *F, const double *g, int64_t m, int64_t k,
                       double qn, double hn, const double *u, const double *Fu, const double *s, const double *lam,
                       double *rd, double *rp, double *mu_out) {
    matvec(P, k, k, u, rd);
    for (int64_t a = 0; a < k; ++a) rd[a] += c[a];
    matvec_t_add(F, m, k, lam, rd);
    double mu = 0.0, rd2 = 0.0;
    for (int64_t i = 0; i < m; ++i) {
        rp[i] = Fu[i] + s[i] - g[i];
        mu += s[i] * lam[i];
    }
    for (int64_t a = 0; a < k; ++a) rd2 += rd[a] * rd[a];
    if (mu_out) *mu_out = mu / (double)m;
    return fmax(fmax(sqrt(rd2) / qn, inf_norm(rp, m) / hn), mu / (double)m);
}

/* Active-set polish (doubleopt.solvers.qp.QP.polish): guess A = {lam > s}, factor H at D = 1_A / sqrt(eps),
   refine the equality-constrained KKT conditions; accept only if the polished point's residual is <= tol.
   On success (u, s, lam) are replaced and 1 is returned. Uses w's H, rd, rp and polish vectors. */
static int polish(const Options *o, const double *P, const double *c, const double *F, const double *g,
                  double shift, double qn, double hn, double *u, double *s, double *lam, const double *Fu,
                  Workspace *w) {
    const int64_t k = o->k, m = o->m;
    const Hessian *hs = &w->hs;
    double *H = w->H, *rd = w->rd, *rp = w->rp;
    double *up = w->up, *dp = w->dp, *lp = w->lp, *Fup = w->Fup, *sp = w->sp, *Fdu = w->pFdu;
    INJECT_OVERRUN(3, up, k);
    const double big = 1.0 / sqrt(2.220446049250313e-16);
    for (int64_t i = 0; i < m; ++i) {
        int act = lam[i] > s[i];
        dp[i] = act ? big : 0.0;
        lp[i] = act ? lam[i] : 0.0;
        Fup[i] = Fu[i];
    }
    if (factor(P, hs, dp, m, k, shift, H)) return 0;
    memcpy(up, u, (size_t)k * sizeof(double));
    for (int64_t r = 0; r < (o->polish_rounds > 0 ? o->polish_rounds : 1); ++r) {
        matvec(P, k, k, up, rd);
        for (int64_t a = 0; a < k; ++a) rd[a] = -(rd[a] + c[a]);
        for (int64_t i = 0; i < m; ++i) {
            rp[i] = dp[i] > 0 ? Fup[i] - g[i] : 0.0;
            sp[i] = -(lp[i] + dp[i] * rp[i]);
        }
        matvec_t_add(F, m, k, sp, rd);
        chol_solve(H, k, rd);
        matvec_ft(hs, m, k, rd, Fdu);
        for (int64_t a = 0; a < k; ++a) up[a] += rd[a];
        for (int64_t i = 0; i < m; ++i) {
            lp[i] += dp[i] * (Fdu[i] + rp[i]);
            Fup[i] += Fdu[i];
        }
    }
    for (int64_t i = 0; i < m; ++i) {
        sp[i] = fmax(g[i] - Fup[i], 0.0);
        lp[i] = fmax(lp[i], 0.0);
    }
    double res = residual(P, c, F, g, m, k, qn, hn, up, Fup, sp, lp, rd, rp, NULL);
    if (!(res <= o->tol)) return 0;
    memcpy(u, up, (size_t)k * sizeof(double));
    memcpy(s, sp, (size_t)m * sizeof(double));
    memcpy(lam, lp, (size_t)m * sizeof(double));
    return 1;
}

/* one instance, in w's vectors */
static int solve_iterations(const Options *o, const double *P, const double *c, const double *F, const double *g,
                            double shift, double qn, double hn, double *u, double *s, double *lam, int64_t *iters,
                            int64_t *polished, Workspace *w) {
    const int64_t k = o->k, m = o->m;
    Hessian *hs = &w->hs;
    double *H = w->H, *rd = w->rd, *du = w->du, *e = w->e;
    double *Fu = w->Fu, *rp = w->rp, *d = w->d, *ta = w->ta, *t = w->t, *Fdu = w->Fdu, *dsa = w->dsa,
           *dla = w->dla, *dl = w->dl;
    const double dmax = 1.0 / o->delta;
    *iters = 0;
    *polished = 0;
    transpose_padded(F, m, k, hs);
    if (!o->warm) { /* CVXOPT initial point: (P + F'F) u = -c + F'g; s = g - F u, lam = -s, both shifted > 0 */
        for (int64_t i = 0; i < m; ++i) d[i] = 1.0;
        if (factor(P, hs, d, m, k, shift, H)) return ST_CHOLESKY;
        for (int64_t a = 0; a < k; ++a) u[a] = -c[a];
        matvec_t_add(F, m, k, g, u);
        chol_solve(H, k, u);
        matvec_ft(hs, m, k, u, Fu);
        double ap = -1e300, ad = -1e300;
        for (int64_t i = 0; i < m; ++i) {
            s[i] = g[i] - Fu[i];
            lam[i] = -s[i];
            ap = fmax(ap, -s[i]);
            ad = fmax(ad, -lam[i]);
        }
        for (int64_t i = 0; i < m; ++i) {
            if (ap >= 0) s[i] += 1.0 + ap;
            if (ad >= 0) lam[i] += 1.0 + ad;
        }
    }
    for (int64_t it = 0;; ++it) {
        /* residuals at the current point */
        matvec_ft(hs, m, k, u, Fu);
        double mu;
        double res = residual(P, c, F, g, m, k, qn, hn, u, Fu, s, lam, rd, rp, &mu);
        *iters = it;
        if (!isfinite(res)) return ST_NONFINITE;
        if (res <= o->tol) return ST_CONVERGED;
        if (res <= o->polish_below && polish(o, P, c, F, g, shift, qn, hn, u, s, lam, Fu, w)) {
            *polished = 1;
            return ST_CONVERGED;
        }
        if (res <= o->polish_below) /* the polish overwrote rd, rp: recompute them */
            res = residual(P, c, F, g, m, k, qn, hn, u, Fu, s, lam, rd, rp, &mu);
        if (inf_norm(lam, m) > o->ydiv_limit || inf_norm(u, k) > o->zdiv_limit) return ST_DIVERGED;
        if (it >= o->max_iter) return ST_BUDGET;
        for (int64_t i = 0; i < m; ++i) d[i] = fmin(lam[i] / s[i], dmax);
        if (factor(P, hs, d, m, k, shift, H)) return ST_CHOLESKY;
        /* predictor (affine scaling): t = lam r_p / s - lam */
        for (int64_t i = 0; i < m; ++i) ta[i] = lam[i] * rp[i] / s[i] - lam[i];
        for (int64_t a = 0; a < k; ++a) du[a] = -rd[a];
        for (int64_t i = 0; i < m; ++i) t[i] = -ta[i];
        matvec_t_add(F, m, k, t, du);
        chol_solve(H, k, du);
        matvec_ft(hs, m, k, du, Fdu);
        for (int64_t i = 0; i < m; ++i) {
            dsa[i] = -rp[i] - Fdu[i];
            dla[i] = d[i] * Fdu[i] + ta[i];
        }
        double aaff = fmin(1.0, fmin(step_to_boundary(s, dsa, m), step_to_boundary(lam, dla, m)));
        double muaff = 0.0;
        for (int64_t i = 0; i < m; ++i) muaff += (s[i] + aaff * dsa[i]) * (lam[i] + aaff * dla[i]);
        muaff /= (double)m;
        double sigma = fmin(fmax(muaff / fmax(mu, 1e-300), 0.0), 1.0);
        sigma = sigma * sigma * sigma;
        /* corrector: t = t_a - (ds_a dl_a - sigma mu) / s, same factorization */
        for (int64_t i = 0; i < m; ++i) t[i] = ta[i] - (dsa[i] * dla[i] - sigma * mu) / s[i];
        for (int64_t a = 0; a < k; ++a) du[a] = -rd[a];
        for (int64_t i = 0; i < m; ++i) dl[i] = -t[i];
        matvec_t_add(F, m, k, dl, du);
        chol_solve(H, k, du);
        matvec_ft(hs, m, k, du, Fdu);
        for (int64_t i = 0; i < m; ++i) dl[i] = d[i] * Fdu[i] + t[i];
        INJECT_OVERRUN(1, dl, m);
        for (int64_t r = 0; r < o->refine; ++r) { /* e = rd + P du + F' dl (the unreduced operator) */
            matvec(P, k, k, du, e);
            for (int64_t a = 0; a < k; ++a) e[a] = -(e[a] + rd[a]);
            for (int64_t i = 0; i < m; ++i) dsa[i] = -dl[i];
            matvec_t_add(F, m, k, dsa, e);
            chol_solve(H, k, e);
            for (int64_t a = 0; a < k; ++a) du[a] += e[a];
            matvec_ft(hs, m, k, e, dsa);
            for (int64_t i = 0; i < m; ++i) {
                Fdu[i] += dsa[i];
                dl[i] += d[i] * dsa[i];
            }
        }
        for (int64_t i = 0; i < m; ++i) dsa[i] = -rp[i] - Fdu[i]; /* ds */
        double a = fmin(step_to_boundary(s, dsa, m), step_to_boundary(lam, dl, m));
        a = fmin(o->step_fraction * a, 1.0);
        for (int64_t b = 0; b < k; ++b) u[b] += a * du[b];
        for (int64_t i = 0; i < m; ++i) {
            s[i] += a * dsa[i];
            lam[i] += a * dl[i];
        }
    }
}

/* solve_iterations, then the factor L of H at the returned point (at 1_A / sqrt(eps), A = {lam > s}, where it
   polished, else at lam / s): the caller's state and KKT backward use it. *lok = 0 where it is not available. */
static int solve_one(const Options *o, const double *P, const double *c, const double *F, const double *g,
                     double shift, double qn, double hn, double *u, double *s, double *lam, int64_t *iters,
                     int64_t *polished, Workspace *w, double *L, int64_t *lok) {
    const int64_t k = o->k, m = o->m;
    int status = solve_iterations(o, P, c, F, g, shift, qn, hn, u, s, lam, iters, polished, w);
    *lok = 0;
    if (status == ST_NONFINITE) return status;
    double *H = w->H, *d = w->d;
    const double big = 1.0 / sqrt(2.220446049250313e-16), dmax = 1.0 / o->delta;
    for (int64_t i = 0; i < m; ++i) d[i] = *polished ? (lam[i] > s[i] ? big : 0.0) : fmin(lam[i] / s[i], dmax);
    if (factor(P, &w->hs, d, m, k, shift, H)) return status;
    for (int64_t a = 0; a < k; ++a)
        for (int64_t b = 0; b < k; ++b) L[a * k + b] = b <= a ? H[a * k + b] : 0.0;
    *lok = 1;
    return status;
}

/* Instances [b0, b1) of the batch. Strides are in doubles between instances (0: shared by the batch).
   ydiv / zdiv: per-instance divergence thresholds on max |lam| and max |u|. Returns nothing; writes
   u (B, k), s (B, m), lam (B, m), iters (B,), polished (B,), status (B,), L (B, k, k), lok (B,). */
void doubleopt_qp_ipm(const Options *o, int64_t b0, int64_t b1, const double *P, int64_t sP, const double *c,
                      const double *F, int64_t sF, const double *g, const double *shift, const double *qn,
                      const double *hn, const double *ydiv, const double *zdiv, double *u, double *s,
                      double *lam, int64_t *iters, int64_t *polished, int64_t *status, double *L, int64_t *lok) {
    const int64_t k = o->k, m = o->m;
    INJECT_RACE();
    Workspace w;
    w.hs.kp = (k + 3) / 4 * 4;
    w.hs.mp = (m + VW - 1) / VW * VW;
    const size_t bytes = workspace_layout(&w, NULL, k, m) * sizeof(double); /* a multiple of 64 */
    double *buf = (double *)aligned_alloc(64, bytes);
    if (buf == NULL) {
        for (int64_t b = b0; b < b1; ++b) status[b] = ST_NO_MEMORY, iters[b] = 0, polished[b] = 0, lok[b] = 0;
        return;
    }
    QP_POISON(buf, bytes); /* all but the vectors, which workspace_layout unpoisons */
    workspace_layout(&w, buf, k, m);
    Options ob = *o;
    for (int64_t b = b0; b < b1; ++b) {
        ob.ydiv_limit = ydiv[b];
        ob.zdiv_limit = zdiv[b];
        status[b] = solve_one(&ob, P + b * sP, c + b * k, F + b * sF, g + b * m, shift[b], qn[b], hn[b], u + b * k,
                              s + b * m, lam + b * m, iters + b, polished + b, &w, L + b * k * k, lok + b);
    }
    QP_UNPOISON(buf, bytes);
    free(buf);
}
