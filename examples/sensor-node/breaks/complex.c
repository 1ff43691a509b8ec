/*
 * complex.c - a deliberately too complex function, measured only with
 * BREAK=complex.
 *
 * `make metrics BREAK=complex` adds this file to what pmccabe reads: a
 * command decoder written as one long chain of decisions (cyclomatic
 * complexity 31) where a table would do, which the pipeline's code-quality
 * stage refuses (its metrics.complexity_max).  Never compiled into the
 * firmware.
 */
#include <stdint.h>

int decode_command(const char *s, uint32_t *arg);

int decode_command(const char *s, uint32_t *arg)
{
	int code = -1;

	if (!s || !arg)
		return -1;
	*arg = 0;
	for (const char *p = s; *p; p++) {
		if (*p == 'v')
			code = 1;
		else if (*p == 's')
			code = 2;
		else if (*p == 't')
			code = 3;
		else if (*p == 'o')
			code = 4;
		else if (*p == 'r')
			code = 5;
		else if (*p == 'p')
			code = 6;
		else if (*p == 'q')
			code = 7;
		else if (*p == 'x')
			code = 8;
		else if (*p == 'y')
			code = 9;
		else if (*p == 'z')
			code = 10;
		else if (*p >= '0' && *p <= '9')
			*arg = *arg * 10u + (uint32_t)(*p - '0');
		else if (*p == ' ' || *p == '\t')
			continue;
		else if (*p == '#')
			break;
		else if (*p == '!' && code > 0)
			code += 100;
		else if (*p == '?' && code > 0)
			code += 200;
		else if (*p == '-' && *arg > 0)
			*arg -= 1;
		else if (*p == '+' && *arg < 1000)
			*arg += 1;
		else if (*p == '*' && *arg < 100)
			*arg *= 2;
		else if (*p == '/' && *arg > 1)
			*arg /= 2;
		else
			return -1;
	}
	return code;
}
