/* test_c_api.c — includes only lora.h and exercises the parts that need no files. */
#include "lora.h"

#include <stdio.h>
#include <string.h>

int main(void) {
    int failed = 0;
    lora_adapter_params p = lora_adapter_params_default();
    if (p.r != 8 || p.alpha != 16.0f || p.targets != (LORA_TARGET_Q | LORA_TARGET_V)) failed++;
    lora_error err;
    memset(&err, 0, sizeof err);
    lora_model *m = NULL;
    lora_status s = lora_model_load("/nonexistent/dir", &m, &err);
    if (s == LORA_OK || m != NULL || strstr(err.msg, "/nonexistent/dir") == NULL) failed++;
    if (strcmp(lora_status_str(LORA_OK), "ok") != 0) failed++;
    lora_model_free(NULL);
    if (lora_model_n_adapters(NULL) != 0 || lora_model_is_merged(NULL) != 0) failed++;
    printf("test_c_api: %d passed, %d failed\n", 5 - failed, failed);
    return failed ? 1 : 0;
}
