/*
 * gatestat.h - anytime-valid confidence sequences for rollout gates.
 *
 * Pure math: no I/O, no allocation, safe from any thread.
 *
 * A gate is re-checked again and again during a hold (after every report
 * batch).  A fixed-sample interval (Wilson, normal approximation) re-checked
 * that way excludes the true value sooner or later with a probability far
 * above its nominal alpha, so noise becomes false rollbacks.  The intervals
 * here are confidence sequences: with probability at least 1 - alpha they
 * contain the true value at EVERY sample size at once, so a gate may look
 * after every batch and stop whenever it likes.  They come from mixture
 * martingales and Ville's inequality (P(sup_n M_n >= 1/alpha) <= alpha for a
 * nonnegative martingale with M_0 = 1), as in Netflix's sequential canary
 * testing: Lindon, Sanden, Shirikian, "Rapid Regression Detection in
 * Software Deployments through Sequential Testing" (KDD 2022) and "Anytime
 * Valid Inference for Multinomial Count Data" (NeurIPS 2022).
 *
 * Every interval is two-sided at level alpha: {x : M_n(x) < 1/alpha}.
 * Any prior fixed before the data keeps the guarantee; the prior only moves
 * power (how soon a real difference is proven).  See docs/gates.md.
 */
#ifndef OTA_GATESTAT_H
#define OTA_GATESTAT_H

#include <stdint.h>

/* Default prior Beta(1,1) (uniform): no assumption about the scale. */
#define GATESTAT_PRIOR_A 1.0
#define GATESTAT_PRIOR_B 1.0

/*
 * Confidence sequence for a Bernoulli proportion p from k successes in n
 * trials: {p : M_n(p) < 1/alpha} with the Beta(a,b)-mixture martingale
 *
 *   M_n(p) = B(a + k, b + n - k) / (B(a, b) p^k (1 - p)^(n - k)).
 *
 * log M_n is convex in p with its minimum (<= 0) at the MLE k/n, so the set
 * is an interval; its ends are found by monotone Newton steps from outside.
 * k = 0 gives lo = 0, k = n gives hi = 1, n = 0 gives [0, 1].  Invalid
 * input (k > n, negative counts, alpha outside (0,1), prior <= 0) gives
 * [0, 1] too.  Always returns 0.
 */
int gatestat_prop_cs(int64_t k, int64_t n, double alpha, double prior_a, double prior_b,
		     double *lo, double *hi);

/* log M_n(p) above (for tests and for callers that only need to know
 * whether one value is excluded: excluded iff log M_n(p) >= log(1/alpha)). */
double gatestat_prop_log_martingale(int64_t k, int64_t n, double p, double prior_a,
				    double prior_b);

/*
 * Confidence sequence for the rate lambda of a Poisson process from count
 * events over exposure (e.g. crashes over device-hours), with a
 * Gamma(shape, rate)-mixture martingale in closed form:
 *
 *   M(lambda) = r^s Gamma(s + c) / (Gamma(s) (r + E)^(s + c))
 *               / (lambda^c e^(-lambda E)).
 *
 * The prior mean is shape/rate.  exposure <= 0 gives [0, +inf).
 */
int gatestat_poisson_cs(int64_t count, double exposure, double alpha, double prior_shape,
			double prior_rate, double *lo, double *hi);

/*
 * Confidence sequence for rho = lambda_a / lambda_b, the ratio of the rates
 * of two Poisson processes (canary a against baseline b), from their counts
 * and exposures (device-hours, or devices / boots for per-device events).
 *
 * Reduction (conditional binomial): given N = count_a + count_b, count_a is
 * Binomial(N, theta) with theta = rho e_a / (rho e_a + e_b), whatever the
 * baseline rate (the nuisance parameter drops out).  The Beta(1,1)-mixture
 * sequence for theta is mapped to rho = theta e_b / ((1 - theta) e_a),
 * which is monotone, so the ends map to ends.
 *
 * Assumption: the exposure ratio e_a / e_b stays roughly stable while the
 * gate is judged (within one rollout step); strictly, the reduction is exact
 * when each new event falls in a with the same probability theta.  When
 * the canary's share of exposure grows between steps the sequence is
 * approximate.  Overdispersion (one device crashing in a loop) also breaks
 * the Poisson model; gates on proportions of devices do not have that
 * problem.
 *
 * Undefined cases (an exposure <= 0, no events at all) give [0, +inf).
 */
int gatestat_rate_ratio_cs(int64_t count_a, double exposure_a, int64_t count_b,
			   double exposure_b, double alpha, double *lo, double *hi);

/*
 * The fixed-sample Wilson score interval at level alpha (two-sided).  NOT
 * anytime-valid: only the benchmark and the tests use it, as the naive
 * comparison that inflates false alarms when re-checked.  n = 0: [0, 1].
 */
int gatestat_wilson(int64_t k, int64_t n, double alpha, double *lo, double *hi);

/* The standard normal quantile Phi^-1(p), 0 < p < 1. */
double gatestat_normal_quantile(double p);

#endif
