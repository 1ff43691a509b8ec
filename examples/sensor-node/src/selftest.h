/*
 * selftest.h - the power-on self-test.
 *
 * Runs the firmware's own logic against known answers: CRC vectors, a ring
 * buffer filled past capacity and drained, a frame round trip, a corrupted
 * frame, and the first sensor readings.  Pure logic, no hardware, so the
 * host unit tests run it too.
 */
#ifndef SENSOR_SELFTEST_H
#define SENSOR_SELFTEST_H

/* NULL when every check passes, else the name of the first failing check
 * (a static string, e.g. "crc16-check-value"). */
const char *selftest_run(void);

#endif
