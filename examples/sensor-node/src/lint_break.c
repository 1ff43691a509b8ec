/*
 * lint_break.c - a deliberate static-analysis error, off by default.
 *
 * `make lint BREAK=lint` defines SENSOR_BREAK_LINT, and cppcheck then finds
 * an out-of-bounds write below (arrayIndexOutOfBounds, severity error), so a
 * pipeline's analysis stage with `thresholds: {error: 0}` fails.  Normal
 * builds and `make lint` compile this file to nothing but the typedef.
 */
#include <stdint.h>

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
