/* rollout_kind.h - validation shared by the soak and rollout kinds. */
#ifndef OTA_ROLLOUT_KIND_H
#define OTA_ROLLOUT_KIND_H

#include "stage.h"

int rollout_kind_validate(const struct pipeline *p, const struct pl_stage *st, struct pl_diags *d);

#endif
