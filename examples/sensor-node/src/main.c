/*
 * main.c - sensor-node: sample, frame, report over UART, answer commands.
 *
 * Boot sequence, as hil/hil.py expects it on UART0:
 *
 *     sensor-node 1.4.0 counter=3 board=mps2-an385
 *     FRAME A507...        (BOOT_FRAMES sample frames, CRC-checked)
 *     SELFTEST PASS        (or "SELFTEST FAIL <check>")
 *     READY
 *
 * with "OTA ..." lines of the update agent (src/ota_port.c) among them:
 * "OTA init phase=..." after the version line, or "OTA off: why" when the
 * primary slot holds no MCUboot image (QEMU without the rig's flash file).
 *
 * SysTick fires every millisecond (libotadev's clock) and SAMPLE_HZ times a
 * second its handler reads the (simulated) sensor into the ring buffer.
 * main() drains the ring, keeping the newest sample, steps libotadev when
 * it is due, and answers one-letter commands terminated by a newline:
 * "v" the version line, "s" a frame of the next sample, "t" the
 * self-test again, "o" the update agent's state, "p" the power counters,
 * "r" reboot (SYSRESETREQ), "V" a signature put to the secure element
 * (ota_port.h); and framed commands, "C <hex frame>" (proto.h).
 * Between ticks the core sleeps in WFI, so an idle QEMU costs no CPU.
 *
 * Power counters ("p"): every SysTick counts one millisecond, as asleep
 * when the core was in WFI when the tick came and as active otherwise,
 * and each wake-up from WFI.  hil/power.py turns them into current with a
 * board model (docs/stages.md, "Power").  BREAK=power idles by polling
 * instead of WFI: a firmware that never sleeps.
 */
#include <stdint.h>

#include "frame.h"
#include "mps2.h"
#include "ota_port.h"
#include "proto.h"
#include "ringbuf.h"
#include "selftest.h"
#include "sensor.h"
#include "uart.h"
#include "version.h"

#define TICK_HZ     1000u /* SysTick: libotadev's millisecond clock */
#define SAMPLE_HZ   50u
#define BOOT_FRAMES 4u
#define LINE_MAX    96u /* "C " and the hex of a FRAME_MAX frame fit */

void SysTick_Handler(void);

static struct ringbuf ring;
static struct sensor sensor;
static struct proto proto;

/* Power counters: written by SysTick only (main reads them for "p"). */
static volatile uint32_t pw_ms, pw_active_ms, pw_wakeups, pw_samples;
static volatile uint8_t in_wfi; /* main is (about to be) in WFI */

/* Interrupt context: the clock, the power counters, and the only
 * producer of the ring. */
void SysTick_Handler(void)
{
	static unsigned ticks;
	struct sample s;

	pw_ms++;
	if (in_wfi)
		pw_wakeups++;
	else
		pw_active_ms++;
	in_wfi = 0;
	ota_port_tick();
	if (++ticks < TICK_HZ / SAMPLE_HZ)
		return;
	ticks = 0;
	sensor_sample(&sensor, &s);
	(void)ringbuf_push(&ring, &s);
	pw_samples++;
}

#ifndef SENSOR_BREAK_POWER
static void wait_for_interrupt(void)
{
	in_wfi = 1;
	__asm__ volatile("wfi" ::: "memory");
	in_wfi = 0;
}
#else
/* BREAK=power: wait for the next tick by polling, never sleeping. */
static void wait_for_interrupt(void)
{
	uint32_t now = pw_ms;

	while (pw_ms == now)
		;
}
#endif

static void put_counter(const char *label, uint32_t v)
{
	char digits[11];
	unsigned i = sizeof(digits) - 1u;

	digits[i] = '\0';
	do {
		digits[--i] = (char)('0' + v % 10u);
		v /= 10u;
	} while (v && i);
	uart_puts(label);
	uart_puts(&digits[i]);
}

/* "POWER ms=N active=N wakeups=N samples=N", counted since boot: one
 * consistent snapshot, read again when a tick came in between. */
static void report_power(void)
{
	uint32_t ms, active, wakeups, samples;

	do {
		ms = pw_ms;
		active = pw_active_ms;
		wakeups = pw_wakeups;
		samples = pw_samples;
	} while (ms != pw_ms);
	put_counter("POWER ms=", ms);
	put_counter(" active=", active);
	put_counter(" wakeups=", wakeups);
	put_counter(" samples=", samples);
	uart_puts("\r\n");
}

static void emit_frame(const struct sample *s)
{
	uint8_t payload[SAMPLE_PAYLOAD_LEN], frame[FRAME_MAX];
	char hex[2 * FRAME_MAX + 1];
	int n;

	sample_pack(payload, s);
	n = frame_encode(frame, sizeof(frame), payload, sizeof(payload));
	if (n < 0 || frame_to_hex(hex, sizeof(hex), frame, (size_t)n) < 0) {
		uart_putline("ERR frame");
		return;
	}
	uart_puts("FRAME ");
	uart_putline(hex);
}

static void report_selftest(void)
{
	const char *failed = selftest_run();

	if (failed) {
		uart_puts("SELFTEST FAIL ");
		uart_putline(failed);
	} else {
		uart_putline("SELFTEST PASS");
	}
}

static void handle_frame_command(const char *hex, struct sample *latest)
{
	char reply[PROTO_REPLY_MAX];
	unsigned cmd = proto_handle(&proto, hex, reply);

	uart_putline(reply);
	if (cmd == PROTO_SAMPLE) {
		while (ringbuf_pop(&ring, latest) != 0)
			wait_for_interrupt();
		emit_frame(latest);
	}
}

static void handle_command(const char *line, struct sample *latest)
{
	if (line[0] == '\0')
		return;
	if (line[0] == 'C' && line[1] == ' ') {
		handle_frame_command(line + 2, latest);
		return;
	}
	if (line[1] != '\0') {
		uart_putline("ERR unknown command");
		return;
	}
	switch (line[0]) {
	case 'v':
		uart_putline(SENSOR_VERSION_LINE);
		break;
	case 's':
		/* the next sample, so the reply is always newer than the last
		 * one sent (the tick is faster than the sampling) */
		while (ringbuf_pop(&ring, latest) != 0)
			wait_for_interrupt();
		emit_frame(latest);
		break;
	case 't':
		report_selftest();
		break;
	case 'o':
		ota_port_print_status();
		break;
	case 'p':
		report_power();
		break;
	case 'V':
		ota_port_verify_console();
		break;
	case 'r':
		uart_putline("REBOOT");
		ota_port_reboot();
	default:
		uart_putline("ERR unknown command");
		break;
	}
}

int main(void)
{
	struct sample latest = { 0, 0 };
	char line[LINE_MAX];
	unsigned len = 0, boot_frames = 0;
	int overflow = 0;

#ifdef SENSOR_BREAK_HANG
	/* BREAK=hang: wait for a sensor that never answers, before any output,
	 * so a HIL run sees nothing and must time out. */
	for (;;)
		wait_for_interrupt();
#endif
	uart_init();
	uart_putline(SENSOR_VERSION_LINE);
#ifdef SENSOR_BUILD_STAMP
	/* INJECT_TIMESTAMP=1: a deliberately non-reproducible build */
	uart_putline("build-stamp=" SENSOR_BUILD_STAMP);
#endif
	ota_port_init();
	ringbuf_init(&ring);
	sensor_init(&sensor);
	proto_init(&proto);
	SYST_RVR = MPS2_SYSCLK_HZ / TICK_HZ - 1u;
	SYST_CVR = 0;
	SYST_CSR = SYST_CSR_CLKSOURCE | SYST_CSR_TICKINT | SYST_CSR_ENABLE;

	while (boot_frames < BOOT_FRAMES) {
		if (ringbuf_pop(&ring, &latest) == 0) {
			emit_frame(&latest);
			boot_frames++;
		} else {
			wait_for_interrupt();
		}
	}
	report_selftest();
	uart_putline("READY");

	for (;;) {
		int c;

		while (ringbuf_pop(&ring, &latest) == 0)
			;
		while ((c = uart_getc()) >= 0) {
			if (c == '\n' || c == '\r') {
				line[len] = '\0';
				if (overflow) {
					/* never act on a cut line: refuse it whole */
					char reply[PROTO_REPLY_MAX];

					proto_oversized(reply);
					uart_putline(reply);
				} else {
					handle_command(line, &latest);
				}
				len = 0;
				overflow = 0;
			} else if (len < LINE_MAX - 1u) {
				line[len++] = (char)c;
			} else {
				overflow = 1;
			}
		}
		ota_port_poll();
		wait_for_interrupt();
	}
}
