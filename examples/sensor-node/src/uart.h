/*
 * uart.h - polled driver for the CMSDK APB UART0 of the MPS2 boards.
 *
 * Transmit waits for room; receive never waits.  Lines end in "\r\n" on the
 * wire so a terminal shows them properly.
 */
#ifndef SENSOR_UART_H
#define SENSOR_UART_H

/* Set the baud divider for 115200 baud and enable TX and RX. */
void uart_init(void);

void uart_putc(char c);

/* Write a NUL-terminated string. */
void uart_puts(const char *s);

/* Write a string and "\r\n". */
void uart_putline(const char *s);

/* A received byte 0..255, or -1 when none is waiting. */
int uart_getc(void);

#endif
