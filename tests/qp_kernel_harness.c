/* Memory check of the QP kernel (tests/test_qp_native.py builds it with AddressSanitizer): random reduced QPs of
   awkward sizes (k, m not multiples of the vector width or of 4; per-instance and shared matrices). */
#include QP_IPM_SOURCE
#include <stdio.h>
static double rnd(void){ return rand()/(double)RAND_MAX - 0.5; }
int main(void){
  int sizes[][2] = {{1,1},{3,5},{5,9},{7,17},{13,3},{40,100}};
  for (int si=0; si<6; ++si){
    int64_t k=sizes[si][0], m=sizes[si][1], B=3;
    double *P=malloc(8*B*k*k),*c=malloc(8*B*k),*F=malloc(8*B*m*k),*g=malloc(8*B*m),*sh=malloc(8*B),*qn=malloc(8*B),*hn=malloc(8*B),*yd=malloc(8*B),*zd=malloc(8*B);
    double *u=malloc(8*B*k),*s=malloc(8*B*m),*lam=malloc(8*B*m),*L=malloc(8*B*k*k); int64_t *it=malloc(8*B),*pol=malloc(8*B),*st=malloc(8*B),*lok=malloc(8*B);
    for(int64_t b=0;b<B;b++){
      double *Pb=P+b*k*k; for(int64_t a=0;a<k;a++) for(int64_t e=0;e<k;e++) Pb[a*k+e]=(a==e)?1.0:0.0;
      for(int64_t i=0;i<m*k;i++) F[b*m*k+i]=rnd();
      for(int64_t a=0;a<k;a++) c[b*k+a]=rnd();
      for(int64_t i=0;i<m;i++){ double v=0; for(int64_t a=0;a<k;a++) v+=F[b*m*k+i*k+a]*0.1; g[b*m+i]=v+0.5+rnd()*0.4; }
      sh[b]=1e-12; qn[b]=1.5; hn[b]=1.5; yd[b]=1e3; zd[b]=1e6;
    }
    Options o = {k, m, 50, 1, 2, 0, 1e-10, 1.9e-12, 0.99, 0, 0, 1e-6};
    doubleopt_qp_ipm(&o, 0, B, P, k*k, c, F, m*k, g, sh, qn, hn, yd, zd, u, s, lam, it, pol, st, L, lok);
    for (int64_t b = 0; b < B; ++b)
      if (st[b] != 0 || !lok[b]) { printf("k=%ld m=%ld instance %ld: status %ld lok %ld\n", k, m, b, st[b], lok[b]); return 1; }
    /* shared P and F (stride 0) */
    doubleopt_qp_ipm(&o, 0, B, P, 0, c, F, 0, g, sh, qn, hn, yd, zd, u, s, lam, it, pol, st, L, lok);
    if (st[0] != 0) { printf("shared k=%ld m=%ld: status %ld\n", k, m, st[0]); return 1; }
    free(P);free(c);free(F);free(g);free(sh);free(qn);free(hn);free(yd);free(zd);free(u);free(s);free(lam);free(L);free(it);free(pol);free(st);free(lok);
  }
  printf("ok\n");
  return 0;
}
