/*
 * uart.c - CMSDK APB UART0, UART1 and UART2, polled (see uart.h).
 *
 * QEMU ignores the baud rate but, like the real IP, transmits nothing unless
 * BAUDDIV is at least 16, so it is set to what the 25 MHz board needs.
 */
#include "uart.h"

#include "mps2.h"

#define BAUD 115200u

static void init(uint32_t base)
{
	UART_CTRL(base) = 0;
	UART_BAUDDIV(base) = MPS2_SYSCLK_HZ / BAUD;
	UART_CTRL(base) = UART_CTRL_TXEN | UART_CTRL_RXEN;
}

static void putc_on(uint32_t base, char c)
{
	while (UART_STATE(base) & UART_STATE_TXFULL)
		;
	UART_DATA(base) = (uint8_t)c;
}

static int getc_on(uint32_t base)
{
	if (!(UART_STATE(base) & UART_STATE_RXFULL))
		return -1;
	return (int)(UART_DATA(base) & 0xFFu);
}

void uart_init(void)
{
	init(UART0_BASE);
}

void uart_putc(char c)
{
	putc_on(UART0_BASE, c);
}

void uart_puts(const char *s)
{
	while (*s)
		uart_putc(*s++);
}

void uart_putline(const char *s)
{
	uart_puts(s);
	uart_puts("\r\n");
}

int uart_getc(void)
{
	return getc_on(UART0_BASE);
}

void uart1_init(void)
{
	init(UART1_BASE);
}

void uart1_putc(char c)
{
	putc_on(UART1_BASE, c);
}

int uart1_getc(void)
{
	return getc_on(UART1_BASE);
}

void uart2_init(void)
{
	init(UART2_BASE);
}

void uart2_putc(char c)
{
	putc_on(UART2_BASE, c);
}

int uart2_getc(void)
{
	return getc_on(UART2_BASE);
}
