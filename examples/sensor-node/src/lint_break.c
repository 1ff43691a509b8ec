/*
 * lint_break.c - a deliberate static-analysis error, off by default.
 *
 * `make lint BREAK=lint` defines SENSOR_BREAK_LINT, and cppcheck then finds
 * an out-of-bounds write below (arrayIndexOutOfBounds, severity error), so a
 * pipeline's analysis stage with `thresholds: {error: 0}` fails.  Normal
 * builds and `make lint` compile this file to nothing but the typedef.
 *
 * `make misra BREAK=misra` defines SENSOR_BREAK_MISRA: a buffer taken from
 * the heap, which MISRA C:2012 rule 21.3 forbids (no malloc/free in this
 * firmware), so the compliance stage fails on a new misra-c2012-21.3.
 */
#include <stdint.h>
#include <stdlib.h> /* for SENSOR_BREAK_MISRA, here because MISRA rule 20.1 wants includes first */

typedef int lint_break_unused; /* keeps the translation unit non-empty */

#ifdef SENSOR_BREAK_LINT
uint32_t lint_break_sum(void);

uint32_t lint_break_sum(void)
{
	uint32_t readings[4] = { 1, 2, 3, 4 };
	uint32_t sum = 0;

	for (unsigned i = 0; i < 4; i++)
		sum += readings[i];
	readings[4] = sum; /* one past the end */
	return readings[0];
}
#endif

#ifdef SENSOR_BREAK_MISRA

uint32_t misra_break_sum(void);

uint32_t misra_break_sum(void)
{
	uint32_t *readings = malloc(4 * sizeof(*readings));
	uint32_t sum = 0;

	if (readings != NULL) {
		for (unsigned i = 0; i < 4; i++) {
			readings[i] = i;
			sum += readings[i];
		}
		free(readings);
	}
	return sum;
}
#endif
