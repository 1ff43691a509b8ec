/*
 * gatestat.c - confidence sequences for gates; see gatestat.h.
 *
 * Each sequence is the set {x : log M(x) < log(1/alpha)} of a conjugate
 * mixture martingale whose log is convex in x with its minimum (<= 0, a
 * mixture never beats the best single alternative) at the estimate.  The
 * ends are the two roots of f(x) = log M(x) - log(1/alpha).  We find a
 * point outside each root (f > 0) by halving or doubling away from the
 * estimate, then take Newton steps towards the root: for a convex function,
 * Newton from the outside never overshoots, so the steps move monotonically
 * and converge quadratically without a bracket.  Everything is in log space
 * with lgamma, so a million devices cost the same as a hundred.
 *
 * The upper end of a proportion is computed as 1 - (lower end of 1 - p)
 * with k and the prior swapped; the martingale is symmetric under that
 * swap and the lower end is where doubles are precise.
 */
#include "gatestat.h"

#include <math.h>

/* f(x) and f'(x) of one martingale, minus the threshold. */
struct convex_fn {
	double (*f)(const struct convex_fn *fn, double x);
	double (*df)(const struct convex_fn *fn, double x);
	double c;        /* constant part of log M */
	double k, m;     /* counts (proportion: k, n - k; Poisson: c, exposure) */
	double t;        /* log(1/alpha) */
};

/*
 * Newton from x (f(x) > 0, outside the root) towards the root.  The
 * iteration stops when the step is below a relative 1e-12 or f is ~0.
 */
static double newton_from_outside(const struct convex_fn *fn, double x)
{
	for (int i = 0; i < 200; i++) {
		double fx = fn->f(fn, x), d = fn->df(fn, x), nx;
		if (!(fx > 1e-13) || d == 0 || !isfinite(d))
			break;
		nx = x - fx / d;
		if (!isfinite(nx) || fabs(nx - x) <= 1e-12 * fabs(x)) {
			x = isfinite(nx) ? nx : x;
			break;
		}
		x = nx;
	}
	return x;
}

/* ---- Beta-binomial ------------------------------------------------------ */

static double lbeta(double a, double b)
{
	return lgamma(a) + lgamma(b) - lgamma(a + b);
}

static double prop_f(const struct convex_fn *fn, double p)
{
	double v = fn->c - fn->t;
	if (fn->k > 0)
		v -= fn->k * log(p);
	if (fn->m > 0)
		v -= fn->m * log1p(-p);
	return v;
}

static double prop_df(const struct convex_fn *fn, double p)
{
	return -fn->k / p + fn->m / (1 - p);
}

double gatestat_prop_log_martingale(int64_t k, int64_t n, double p, double a, double b)
{
	double v = lbeta(a + (double)k, b + (double)(n - k)) - lbeta(a, b);
	if (k > 0)
		v -= (double)k * log(p);
	if (n - k > 0)
		v -= (double)(n - k) * log1p(-p);
	return v;
}

/* Lower end of the sequence for k of n (k > 0), prior Beta(a, b). */
static double prop_lower(int64_t k, int64_t n, double t, double a, double b)
{
	struct convex_fn fn = {
		.f = prop_f, .df = prop_df,
		.c = lbeta(a + (double)k, b + (double)(n - k)) - lbeta(a, b),
		.k = (double)k, .m = (double)(n - k), .t = t,
	};
	double x = (double)k / (double)n;

	/* Walk left until outside: f grows by at least k log 2 per halving. */
	for (int i = 0; i < 2000 && !(fn.f(&fn, x) > 0); i++) {
		x /= 2;
		if (x < 1e-300)
			return 0;
	}
	return newton_from_outside(&fn, x);
}

static int valid_alpha(double alpha)
{
	return alpha > 0 && alpha < 1;
}

int gatestat_prop_cs(int64_t k, int64_t n, double alpha, double a, double b, double *lo,
		     double *hi)
{
	double t;

	*lo = 0;
	*hi = 1;
	if (n <= 0 || k < 0 || k > n || !valid_alpha(alpha) || !(a > 0) || !(b > 0))
		return 0;
	t = -log(alpha);
	if (k > 0)
		*lo = prop_lower(k, n, t, a, b);
	if (k < n)
		*hi = 1 - prop_lower(n - k, n, t, b, a);
	/* Rounding must never exclude the estimate. */
	if (*lo > (double)k / (double)n)
		*lo = (double)k / (double)n;
	if (*hi < (double)k / (double)n)
		*hi = (double)k / (double)n;
	return 0;
}

/* ---- Gamma-Poisson ------------------------------------------------------ */

static double pois_f(const struct convex_fn *fn, double lambda)
{
	double v = fn->c - fn->t + lambda * fn->m;
	if (fn->k > 0)
		v -= fn->k * log(lambda);
	return v;
}

static double pois_df(const struct convex_fn *fn, double lambda)
{
	return fn->m - fn->k / lambda;
}

int gatestat_poisson_cs(int64_t count, double exposure, double alpha, double s, double r,
			double *lo, double *hi)
{
	struct convex_fn fn = { .f = pois_f, .df = pois_df };
	double est, x;

	*lo = 0;
	*hi = INFINITY;
	if (!(exposure > 0) || count < 0 || !valid_alpha(alpha) || !(s > 0) || !(r > 0))
		return 0;
	fn.c = s * log(r) + lgamma(s + (double)count) - lgamma(s) -
	       (s + (double)count) * log(r + exposure);
	fn.k = (double)count;
	fn.m = exposure;
	fn.t = -log(alpha);
	est = (double)count / exposure;

	if (count > 0) {
		x = est;
		for (int i = 0; i < 2000 && !(fn.f(&fn, x) > 0); i++)
			x /= 2;
		*lo = x < 1e-300 ? 0 : newton_from_outside(&fn, x);
	}
	x = count > 0 ? est : 1 / exposure;
	for (int i = 0; i < 2000 && !(fn.f(&fn, x) > 0); i++)
		x *= 2;
	*hi = newton_from_outside(&fn, x);
	if (*lo > est)
		*lo = est;
	if (*hi < est)
		*hi = est;
	return 0;
}

/* ---- rate ratio --------------------------------------------------------- */

int gatestat_rate_ratio_cs(int64_t count_a, double exposure_a, int64_t count_b,
			   double exposure_b, double alpha, double *lo, double *hi)
{
	double tlo, thi;
	int64_t n = count_a + count_b;

	*lo = 0;
	*hi = INFINITY;
	if (!(exposure_a > 0) || !(exposure_b > 0) || count_a < 0 || count_b < 0 || n <= 0 ||
	    !valid_alpha(alpha))
		return 0;
	gatestat_prop_cs(count_a, n, alpha, 1.0, 1.0, &tlo, &thi);
	*lo = tlo <= 0 ? 0 : tlo * exposure_b / ((1 - tlo) * exposure_a);
	*hi = thi >= 1 ? INFINITY : thi * exposure_b / ((1 - thi) * exposure_a);
	return 0;
}

/* ---- Wilson (fixed-sample, for comparison only) ------------------------- */

double gatestat_normal_quantile(double p)
{
	/* Acklam's rational approximation, refined by one Halley step. */
	static const double a[] = { -3.969683028665376e+01, 2.209460984245205e+02,
				    -2.759285104469687e+02, 1.383577518672690e+02,
				    -3.066479806614716e+01, 2.506628277459239e+00 };
	static const double b[] = { -5.447609879822406e+01, 1.615858368580409e+02,
				    -1.556989798598866e+02, 6.680131188771972e+01,
				    -1.328068155288572e+01 };
	static const double c[] = { -7.784894002430293e-03, -3.223964580411365e-01,
				    -2.400758277161838e+00, -2.549732539343734e+00,
				    4.374664141464968e+00, 2.938163982698783e+00 };
	static const double d[] = { 7.784695709041462e-03, 3.224671290700398e-01,
				    2.445134137142996e+00, 3.754408661907416e+00 };
	const double plow = 0.02425;
	double q, r, x, e, u;

	if (!(p > 0))
		return -INFINITY;
	if (!(p < 1))
		return INFINITY;
	if (p < plow) {
		q = sqrt(-2 * log(p));
		x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
		    ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
	} else if (p <= 1 - plow) {
		q = p - 0.5;
		r = q * q;
		x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
		    (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
	} else {
		q = sqrt(-2 * log1p(-p));
		x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
		    ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
	}
	e = 0.5 * erfc(-x / sqrt(2)) - p;
	u = e * sqrt(2 * M_PI) * exp(x * x / 2);
	return x - u / (1 + x * u / 2);
}

int gatestat_wilson(int64_t k, int64_t n, double alpha, double *lo, double *hi)
{
	double z, ph, nn, denom, center, half;

	*lo = 0;
	*hi = 1;
	if (n <= 0 || k < 0 || k > n || !valid_alpha(alpha))
		return 0;
	z = gatestat_normal_quantile(1 - alpha / 2);
	nn = (double)n;
	ph = (double)k / nn;
	denom = 1 + z * z / nn;
	center = (ph + z * z / (2 * nn)) / denom;
	half = z * sqrt(ph * (1 - ph) / nn + z * z / (4 * nn * nn)) / denom;
	*lo = center - half < 0 ? 0 : center - half;
	*hi = center + half > 1 ? 1 : center + half;
	return 0;
}
