/*
 * fileutil.h — whole-file reads and atomic writes (temp name, fsync, rename).
 */
#ifndef LORA_IO_FILEUTIL_H
#define LORA_IO_FILEUTIL_H

#include "lora.h"

#include <stddef.h>
#include <stdio.h>

/* Reads a whole file into a NUL-terminated malloc'd buffer (*len excludes the NUL); owned: free()
 * it. LORA_ERR_MISSING when the file does not exist, LORA_ERR_IO for other failures. */
lora_status lora_read_file(const char *path, char **data, size_t *len, lora_error *err);

struct cJSON;
/* Reads a file holding one JSON object (adapter_config.json, ...) into *root (owned:
 * cJSON_Delete it). lora_read_file's errors, and LORA_ERR_FORMAT "PATH: not a JSON object". */
lora_status lora_read_json_object(const char *path, struct cJSON **root, lora_error *err);

/* An output file being written under a temporary name. */
typedef struct lora_atomic_file {
    FILE *fp;
    char  path[4096];
    char  tmp[4200];
} lora_atomic_file;

/* Opens PATH.tmp.<pid> for writing. */
lora_status lora_atomic_open(lora_atomic_file *af, const char *path, lora_error *err);
/* Flushes, fsyncs, closes and renames onto the final path (and fsyncs the directory).
 * On failure removes the temporary. */
lora_status lora_atomic_commit(lora_atomic_file *af, lora_error *err);
/* Closes and removes the temporary (after an error). Safe to call twice. */
void lora_atomic_abort(lora_atomic_file *af);

/* Writes a whole buffer atomically. */
lora_status lora_write_file_atomic(const char *path, const void *data, size_t len,
                                   lora_error *err);

/* Joins dir and name into out (size outsz); LORA_ERR_ARG when too long. */
lora_status lora_path_join(char *out, size_t outsz, const char *dir, const char *name,
                           lora_error *err);

/* mkdir -p. */
lora_status lora_mkdirs(const char *dir, lora_error *err);

#endif
