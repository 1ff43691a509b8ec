/*
 * version.h - what the firmware says it is.
 *
 * The Makefile passes SENSOR_VERSION, SENSOR_COUNTER and SENSOR_BOARD as -D
 * defines (VERSION=1.4.0 COUNTER=3 BOARD=mps2-an385 by default), so the
 * version line printed at boot is the one the release records.  The
 * defaults below only serve builds that bypass the Makefile (the host unit
 * tests, cppcheck).
 */
#ifndef SENSOR_VERSION_H
#define SENSOR_VERSION_H

#ifndef SENSOR_VERSION
#define SENSOR_VERSION "0.0.0"
#endif
#ifndef SENSOR_COUNTER
#define SENSOR_COUNTER "0"
#endif
#ifndef SENSOR_BOARD
#define SENSOR_BOARD "host"
#endif

/* "sensor-node 1.4.0 counter=3 board=mps2-an385" */
#define SENSOR_VERSION_LINE \
	"sensor-node " SENSOR_VERSION " counter=" SENSOR_COUNTER " board=" SENSOR_BOARD

#endif
