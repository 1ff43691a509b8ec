/* test_devcrc.c - libotadev's CRC-32 (issue 15: made table-driven for
 * million-device simulations): the standard check value, and the same sum
 * as the bit-by-bit definition for every length up to 2 KiB, so records and
 * U-Boot environments written by older builds still load. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../device/otadev.h"

/* the definition: reflected polynomial 0xedb88320, one bit at a time */
static uint32_t crc32_bitwise(const uint8_t *b, size_t n)
{
	uint32_t c = 0xffffffffu;
	for (size_t i = 0; i < n; i++) {
		c ^= b[i];
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
	}
	return ~c;
}

static void check_value_of_the_standard(void **state)
{
	(void)state;
	assert_int_equal(otadev_crc32("123456789", 9), 0xcbf43926u);
	assert_int_equal(otadev_crc32("", 0), 0);
	assert_int_equal(otadev_crc32("a", 1), 0xe8b7be43u);
}

static void same_sum_as_bit_by_bit_for_every_length(void **state)
{
	uint8_t buf[2048];
	uint32_t x = 12345;
	(void)state;
	for (size_t i = 0; i < sizeof(buf); i++) {   /* fixed bytes: a linear congruential walk */
		x = x * 1103515245u + 12345u;
		buf[i] = (uint8_t)(x >> 16);
	}
	buf[7] = 0x00;
	buf[8] = 0xff;
	for (size_t n = 0; n <= sizeof(buf); n++)
		assert_int_equal(otadev_crc32(buf, n), crc32_bitwise(buf, n));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(check_value_of_the_standard),
		cmocka_unit_test(same_sum_as_bit_by_bit_for_every_length),
	};
	cmocka_set_test_filter(getenv("X_ONLY"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
