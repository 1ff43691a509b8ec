/*
 * startup.c - vector table and reset handler; no vendor start-up code.
 *
 * On reset the core loads the stack pointer from word 0 of the vector table
 * and jumps to word 1, Reset_Handler, which copies .data from its load
 * address in flash to RAM, zeroes .bss, turns the FPU on when built for one
 * (Cortex-M4 hard float), and calls main().  The symbols come from
 * ld/mps2.ld.  Faults park the core in a loop a debugger can find.
 */
#include <stddef.h>
#include <stdint.h>

#include "mps2.h"

extern uint32_t __data_load__[], __data_start__[], __data_end__[];
extern uint32_t __bss_start__[], __bss_end__[];
extern uint32_t __stack_top__[];

int main(void);
void Reset_Handler(void);
void Default_Handler(void);
void SysTick_Handler(void);

void Default_Handler(void)
{
	for (;;)
		;
}

void Reset_Handler(void)
{
	/* sizes from addresses: comparing pointers to different objects
	 * (the linker's symbols) is undefined in C, and cppcheck says so */
	size_t data_words = ((uintptr_t)__data_end__ - (uintptr_t)__data_start__) / sizeof(uint32_t);
	size_t bss_words = ((uintptr_t)__bss_end__ - (uintptr_t)__bss_start__) / sizeof(uint32_t);

	for (size_t i = 0; i < data_words; i++)
		__data_start__[i] = __data_load__[i];
	for (size_t i = 0; i < bss_words; i++)
		__bss_start__[i] = 0;
#if defined(__ARM_FP)
	SCB_CPACR |= 0xFu << 20; /* CP10 and CP11: full access */
	__asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
	(void)main();
	for (;;)
		;
}

typedef void (*vector_fn)(void);

/* The first 16 entries: the core's own exceptions; SysTick is the last. */
__attribute__((section(".vectors"), used)) const vector_fn vector_table[16] = {
	(vector_fn)(uintptr_t)__stack_top__,
	Reset_Handler,
	Default_Handler, /* NMI */
	Default_Handler, /* HardFault */
	Default_Handler, /* MemManage */
	Default_Handler, /* BusFault */
	Default_Handler, /* UsageFault */
	0, 0, 0, 0,      /* reserved */
	Default_Handler, /* SVCall */
	Default_Handler, /* DebugMonitor */
	0,               /* reserved */
	Default_Handler, /* PendSV */
	SysTick_Handler,
};
