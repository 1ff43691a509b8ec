/* buggy.c - deliberately wrong C, the input of cppcheck.xml (regenerate:
 * cd tests/reports && cppcheck --xml --xml-version=2 --enable=all buggy.c 2> cppcheck.xml) */
#include <stdlib.h>
#include <string.h>

int sum(const int *v)
{
	int a[4];
	int s = 0;
	for (int i = 0; i <= 4; i++)
		a[i] = v[i];
	for (int i = 0; i < 4; i++)
		s += a[i];
	return s;
}

char *copy(const char *src)
{
	char *p = malloc(8);
	char *q = malloc(16);
	strcpy(p, src);
	if (!q)
		return NULL;
	free(q);
	free(q);
	return p;
}

int divide(int x)
{
	int zero = 0;
	return x / zero;
}

void unused(int *p)
{
	int u;
	if (p == NULL)
		*p = u;
}
