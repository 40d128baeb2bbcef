/*
 * fileutil.c — whole-file reads, atomic writes (PATH.tmp.<pid>, fflush, fsync, rename, directory
 * fsync), path joining and mkdir -p. POSIX only. Nothing here prints; every failure is returned
 * as a lora_status with a one-line "<path>: <problem>" message.
 */
#include "io/fileutil.h"

#include "core/error.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

/* ---- reading ---- */

lora_status lora_read_file(const char *path, char **data, size_t *len, lora_error *err) {
    *data = NULL;
    *len  = 0;

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return lora_errorf(err, e == ENOENT ? LORA_ERR_MISSING : LORA_ERR_IO, "%s: cannot open: %s",
                           path, strerror(e));
    }

    lora_status st  = LORA_OK;
    char       *buf = NULL;
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        st = lora_errorf(err, LORA_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        st = lora_errorf(err, LORA_ERR_IO, "%s: not a regular file", path);
        goto fail;
    }
    if (sb.st_size < 0 || (uint64_t)sb.st_size >= SIZE_MAX) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: file of %lld bytes is too large to read", path,
                         (long long)sb.st_size);
        goto fail;
    }

    size_t size = (size_t)sb.st_size;
    buf         = malloc(size + 1);
    if (!buf) {
        st = lora_errorf(err, LORA_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, size + 1);
        goto fail;
    }
    size_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0) {
            if (errno == EINTR) continue;
            st = lora_errorf(err, LORA_ERR_IO, "%s: read failed: %s", path, strerror(errno));
            goto fail;
        }
        if (n == 0) break; /* shrank while we read: keep what is there */
        got += (size_t)n;
    }
    buf[got] = '\0';
    close(fd);
    *data = buf;
    *len  = got;
    return LORA_OK;

fail:
    free(buf);
    close(fd);
    return st;
}

/* ---- atomic writes ---- */

lora_status lora_atomic_open(lora_atomic_file *af, const char *path, lora_error *err) {
    memset(af, 0, sizeof *af);
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof af->path) {
        return lora_errorf(err, LORA_ERR_ARG, "%s: output path is empty or too long", path);
    }
    memcpy(af->path, path, n + 1);
    int k = snprintf(af->tmp, sizeof af->tmp, "%s.tmp.%ld", path, (long)getpid());
    if (k < 0 || (size_t)k >= sizeof af->tmp) {
        af->tmp[0] = '\0';
        return lora_errorf(err, LORA_ERR_ARG, "%s: output path is too long", path);
    }

    int fd = open(af->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        int e      = errno;
        af->tmp[0] = '\0';
        return lora_errorf(err, LORA_ERR_IO, "%s: cannot create temporary file: %s", path,
                           strerror(e));
    }
    af->fp = fdopen(fd, "wb");
    if (!af->fp) {
        int e = errno;
        close(fd);
        unlink(af->tmp);
        af->tmp[0] = '\0';
        return lora_errorf(err, LORA_ERR_IO, "%s: cannot open temporary file: %s", path,
                           strerror(e));
    }
    return LORA_OK;
}

/* fsyncs the directory holding path so the rename itself is durable. Best effort: some file
 * systems refuse fsync on a directory, and the file is already in place by then. */
static void fsync_parent_dir(const char *path) {
    char        dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash) {
        strcpy(dir, ".");
    } else if (slash == path) {
        strcpy(dir, "/");
    } else {
        size_t n = (size_t)(slash - path);
        if (n >= sizeof dir) return;
        memcpy(dir, path, n);
        dir[n] = '\0';
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    (void)fsync(fd);
    close(fd);
}

lora_status lora_atomic_commit(lora_atomic_file *af, lora_error *err) {
    if (!af->fp) {
        return lora_errorf(err, LORA_ERR_STATE, "%s: no temporary file open to commit", af->path);
    }
    if (fflush(af->fp) != 0 || ferror(af->fp)) {
        int e = errno;
        lora_atomic_abort(af);
        return lora_errorf(err, LORA_ERR_IO, "%s: write failed: %s", af->path, strerror(e));
    }
    if (fsync(fileno(af->fp)) != 0) {
        int e = errno;
        lora_atomic_abort(af);
        return lora_errorf(err, LORA_ERR_IO, "%s: fsync failed: %s", af->path, strerror(e));
    }
    FILE *fp = af->fp;
    af->fp   = NULL;
    if (fclose(fp) != 0) {
        int e = errno;
        lora_atomic_abort(af);
        return lora_errorf(err, LORA_ERR_IO, "%s: close failed: %s", af->path, strerror(e));
    }
    if (rename(af->tmp, af->path) != 0) {
        int e = errno;
        lora_atomic_abort(af);
        return lora_errorf(err, LORA_ERR_IO, "%s: cannot rename temporary file into place: %s",
                           af->path, strerror(e));
    }
    af->tmp[0] = '\0';
    fsync_parent_dir(af->path);
    return LORA_OK;
}

void lora_atomic_abort(lora_atomic_file *af) {
    if (af->fp) {
        fclose(af->fp);
        af->fp = NULL;
    }
    if (af->tmp[0]) {
        unlink(af->tmp);
        af->tmp[0] = '\0';
    }
}

lora_status lora_write_file_atomic(const char *path, const void *data, size_t len,
                                   lora_error *err) {
    lora_atomic_file af;
    lora_status      st = lora_atomic_open(&af, path, err);
    if (st != LORA_OK) return st;
    if (len > 0 && fwrite(data, 1, len, af.fp) != len) {
        int e = errno;
        lora_atomic_abort(&af);
        return lora_errorf(err, LORA_ERR_IO, "%s: write failed: %s", path, strerror(e));
    }
    return lora_atomic_commit(&af, err);
}

/* ---- paths ---- */

lora_status lora_path_join(char *out, size_t outsz, const char *dir, const char *name,
                           lora_error *err) {
    size_t dn  = strlen(dir);
    size_t nn  = strlen(name);
    int    sep = dn > 0 && dir[dn - 1] != '/';
    if (outsz == 0 || dn + (size_t)sep + nn >= outsz) {
        if (outsz > 0) out[0] = '\0';
        return lora_errorf(err, LORA_ERR_ARG, "%s: path to '%s' is longer than %zu bytes", dir,
                           name, outsz > 0 ? outsz - 1 : 0);
    }
    memcpy(out, dir, dn);
    if (sep) out[dn] = '/';
    memcpy(out + dn + (size_t)sep, name, nn + 1);
    return LORA_OK;
}

/* mkdir that succeeds when a directory is already there. */
static int mkdir_one(const char *p) {
    if (mkdir(p, 0755) == 0) return 0;
    int         e = errno;
    struct stat sb;
    if (e == EEXIST && stat(p, &sb) == 0 && S_ISDIR(sb.st_mode)) return 0;
    errno = e == EEXIST ? ENOTDIR : e;
    return -1;
}

lora_status lora_mkdirs(const char *dir, lora_error *err) {
    char   buf[4096];
    size_t n = strlen(dir);
    if (n == 0 || n >= sizeof buf) {
        return lora_errorf(err, LORA_ERR_ARG, "%s: directory path is empty or too long", dir);
    }
    memcpy(buf, dir, n + 1);
    for (size_t i = 1; i < n; i++) {
        if (buf[i] != '/' || buf[i - 1] == '/') continue;
        buf[i] = '\0';
        if (mkdir_one(buf) != 0) {
            return lora_errorf(err, LORA_ERR_IO, "%s: cannot create directory '%s': %s", dir, buf,
                               strerror(errno));
        }
        buf[i] = '/';
    }
    if (mkdir_one(buf) != 0) {
        return lora_errorf(err, LORA_ERR_IO, "%s: cannot create directory: %s", dir,
                           strerror(errno));
    }
    return LORA_OK;
}

lora_status lora_read_json_object(const char *path, cJSON **root, lora_error *err) {
    char       *text = NULL;
    size_t      len  = 0;
    lora_status st   = lora_read_file(path, &text, &len, err);
    *root            = NULL;
    if (st != LORA_OK) return st;
    cJSON *o = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: not a JSON object", path);
    }
    *root = o;
    return LORA_OK;
}
