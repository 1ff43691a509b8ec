/*
 * ota_port.h - libotadev on the sensor node: the MCU hooks and the loop.
 *
 * main() calls ota_port_init() once after the console is up, then
 * ota_port_poll() from its loop; SysTick calls ota_port_tick() every
 * millisecond.  What each hook does on this board, and what a real board
 * does instead, is in docs/device-porting.md.
 */
#ifndef SENSOR_OTA_PORT_H
#define SENSOR_OTA_PORT_H

#include <stdint.h>

/* Read the provisioning sector and the record, reconcile with the slots
 * (otadev_init) and print "OTA init phase=..." (as ota_port_print_status)
 * or "OTA off: why" on UART0. */
void ota_port_init(void);

/* One libotadev step when it is due (may block on the update link). */
void ota_port_poll(void);

/* "OTA phase=... version=... counter=N gen=N queued=N image_ok=..." */
void ota_port_print_status(void);

/* The console's "V": read one hex line (slot, sig type, digest,
 * signature), ask the secure element, print "VERIFY valid" or
 * "VERIFY refused: why" (the rig's test of the verify path). */
void ota_port_verify_console(void);

/* SysTick, 1 kHz: the millisecond clock. */
void ota_port_tick(void);
uint64_t ota_port_now_ms(void);

/* Reset the chip (SCB AIRCR SYSRESETREQ); does not return. */
void ota_port_reboot(void) __attribute__((noreturn));

#endif
