/*
 * uart.h - polled driver for the CMSDK APB UART0, UART1 and UART2 of the MPS2 boards.
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

/* UART1, the update link to the rig's bridge (src/ota_link.c): the same
 * polled driver, raw bytes. */
void uart1_init(void);
void uart1_putc(char c);
int uart1_getc(void);

/* UART2, the secure element (src/se_link.h): raw bytes. */
void uart2_init(void);
void uart2_putc(char c);
int uart2_getc(void);

#endif
