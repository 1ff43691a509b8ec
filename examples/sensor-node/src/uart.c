/*
 * uart.c - CMSDK APB UART0, polled (see uart.h).
 *
 * QEMU ignores the baud rate but, like the real IP, transmits nothing unless
 * BAUDDIV is at least 16, so it is set to what the 25 MHz board needs.
 */
#include "uart.h"

#include "mps2.h"

#define BAUD 115200u

void uart_init(void)
{
	UART0_CTRL = 0;
	UART0_BAUDDIV = MPS2_SYSCLK_HZ / BAUD;
	UART0_CTRL = UART_CTRL_TXEN | UART_CTRL_RXEN;
}

void uart_putc(char c)
{
	while (UART0_STATE & UART_STATE_TXFULL)
		;
	UART0_DATA = (uint8_t)c;
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
	if (!(UART0_STATE & UART_STATE_RXFULL))
		return -1;
	return (int)(UART0_DATA & 0xFFu);
}
