/*
 * verify.h - otactl verify: check a release (or one signed image) offline.
 */
#ifndef OTA_VERIFY_H
#define OTA_VERIFY_H

/* Returns otactl's exit code: 0 everything verified, 1 a check failed. */
int otactl_verify(const char *url, const char *token, int argc, char **argv);

#endif
