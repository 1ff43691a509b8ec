/*
 * mps2.h - the few registers of the MPS2 boards (AN385 Cortex-M3, AN386
 * Cortex-M4) the firmware touches: CMSDK APB UART0, UART1 and UART2, the core's
 * SysTick and the reset request.
 * Both boards have the same memory map, so one header serves both.
 */
#ifndef SENSOR_MPS2_H
#define SENSOR_MPS2_H

#include <stdint.h>

#define MPS2_SYSCLK_HZ 25000000u /* FPGA system clock, also QEMU's */

#define REG32(addr) (*(volatile uint32_t *)(uintptr_t)(addr))

/* CMSDK APB UARTs: UART0 the console, UART1 the update link (hil/bridge.py),
 * UART2 the secure element (hil/se_model.py on QEMU) */
#define UART0_BASE     0x40004000u
#define UART1_BASE     0x40005000u
#define UART2_BASE     0x40006000u
#define UART_DATA(b)    REG32((b) + 0x00u)
#define UART_STATE(b)   REG32((b) + 0x04u)
#define UART_CTRL(b)    REG32((b) + 0x08u)
#define UART_BAUDDIV(b) REG32((b) + 0x10u)
#define UART0_DATA     UART_DATA(UART0_BASE)
#define UART0_STATE    UART_STATE(UART0_BASE)
#define UART0_CTRL     UART_CTRL(UART0_BASE)
#define UART0_BAUDDIV  UART_BAUDDIV(UART0_BASE)
#define UART_STATE_TXFULL 0x1u
#define UART_STATE_RXFULL 0x2u
#define UART_CTRL_TXEN    0x1u
#define UART_CTRL_RXEN    0x2u

/* SysTick (ARMv7-M system control space) */
#define SYST_CSR REG32(0xE000E010u)
#define SYST_RVR REG32(0xE000E014u)
#define SYST_CVR REG32(0xE000E018u)
#define SYST_CSR_ENABLE    0x1u
#define SYST_CSR_TICKINT   0x2u
#define SYST_CSR_CLKSOURCE 0x4u /* processor clock */

/* Application interrupt and reset control: VECTKEY | SYSRESETREQ resets
 * the whole chip (NVIC_SystemReset in CMSIS) */
#define SCB_AIRCR REG32(0xE000ED0Cu)
#define SCB_AIRCR_SYSRESET 0x05FA0004u

/* Coprocessor access control, to turn the Cortex-M4's FPU on */
#define SCB_CPACR REG32(0xE000ED88u)

#endif
