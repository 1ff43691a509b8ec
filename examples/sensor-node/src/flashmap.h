/*
 * flashmap.h - where MCUboot's slots and the update record live.
 *
 * A real board with MCUboot (swap using scratch) has, in its internal flash:
 *
 *     bootloader | primary slot (runs) | secondary slot (download) | scratch | state
 *
 * The QEMU mps2 boards have no flash controller.  Their 16 MiB PSRAM at
 * 0x21000000 stands in for it: plain RAM, which the HIL backs with a file
 * (`-machine memory-backend=` with a memory-backend-file), so its contents
 * survive a guest reset and a QEMU restart like flash survives a power
 * cycle.  The code itself runs from SSRAM1 at 0x00000000, loaded by QEMU
 * (no bootloader runs there): the primary slot holds the signed MCUboot
 * image of the same build, written by the rig, so libotadev reads what a
 * board would run.  src/ota_port.c gives the region NOR-flash rules: erase
 * by 4 KiB sector to 0xff, a write may only clear bits.
 */
#ifndef SENSOR_FLASHMAP_H
#define SENSOR_FLASHMAP_H

#define FLASH_BASE     0x21000000u /* QEMU: PSRAM, file-backed by the rig */
#define FLASH_SIZE     0x01000000u
#define FLASH_SECTOR   4096u       /* erase unit */

#define SLOT_SIZE      0x00020000u /* 128 KiB per slot: 32 sectors */
#define SLOT0_OFF      0x00000000u /* primary: the image MCUboot boots */
#define SLOT1_OFF      0x00020000u /* secondary: libotadev downloads here */
#define SCRATCH_OFF    0x00040000u /* MCUboot's swap scratch (the bootloader's only) */
#define STATE_OFF      0x00041000u /* two sectors: the update record, A/B copies */
#define STATE_SECTORS  2u

#endif
