/*
 * trainer.c — a training run end to end (lora_train in lora.h): data, method, AdamW loop with
 * gradient accumulation, evaluation, metrics.jsonl, atomic checkpoints, exact resume, and the
 * final adapter or model directory.
 *
 * Exact resume: a checkpoint holds every trainable tensor and its AdamW moments bit for bit,
 * the AdamW step count, the optimizer step, the data batcher's position and the dropout pass
 * counter; with the same thread count the resumed run replays the same floating-point
 * operations in the same order, so its losses equal the uninterrupted run's.
 *
 * What it is not: a scheduler of several runs, or a distributed trainer.
 */
#include "core/error.h"
#include "data/dataset.h"
#include "io/fileutil.h"
#include "io/safetensors.h"
#include "model/gpt2.h"
#include "peft/peft.h"

#include <cjson/cJSON.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHECKPOINT_FILE "checkpoint.safetensors"
#define ARGS_FILE       "train_args.json"
#define METRICS_FILE    "metrics.jsonl"
#define LOCK_FILE       ".lock"

lora_train_params lora_train_params_default(void) {
    lora_train_params p;
    memset(&p, 0, sizeof p);
    p.adapter            = lora_adapter_params_default();
    p.optim              = lora_optim_params_default();
    p.optim.warmup_steps = -1; /* auto: min(500, steps / 10) */
    p.batch              = 8;
    p.grad_accum         = 1;
    p.seq_len            = 0;
    p.epochs             = 1;
    p.label_smoothing    = 0.1f;
    p.eval_every         = 0;
    p.save_every         = 0;
    p.log_every          = 1;
    p.seed               = 42;
    return p;
}

/* ---- saved options (train_args.json) ---- */

static const char *method_str(lora_method m) {
    return m == LORA_METHOD_FULL ? "full" : m == LORA_METHOD_BITFIT ? "bitfit"
           : m == LORA_METHOD_ADALORA ? "adalora" : "lora";
}

static const char *schedule_str(lora_schedule_kind k) {
    return k == LORA_SCHEDULE_COSINE ? "cosine" : k == LORA_SCHEDULE_CONSTANT ? "constant"
                                                                               : "linear";
}

static void add_str(cJSON *o, const char *k, const char *v) {
    if (v) cJSON_AddStringToObject(o, k, v);
    else cJSON_AddNullToObject(o, k);
}

static char *args_to_json(const lora_train_params *p) {
    cJSON *o = cJSON_CreateObject();
    add_str(o, "model", p->model_dir);
    add_str(o, "tokenizer", p->tokenizer_dir);
    add_str(o, "data", p->data_path);
    add_str(o, "val", p->val_path);
    add_str(o, "out", p->out_dir);
    add_str(o, "method", method_str(p->adapter.method));
    cJSON_AddNumberToObject(o, "r", p->adapter.r);
    cJSON_AddNumberToObject(o, "alpha", p->adapter.alpha);
    cJSON_AddNumberToObject(o, "dropout", p->adapter.dropout);
    cJSON_AddNumberToObject(o, "targets", p->adapter.targets);
    cJSON_AddBoolToObject(o, "use_rslora", p->adapter.use_rslora);
    cJSON_AddStringToObject(o, "init", p->adapter.init == LORA_INIT_GAUSSIAN ? "gaussian"
                                                                             : "kaiming");
    if (p->adapter.method == LORA_METHOD_ADALORA) { /* init_r is "r" */
        const lora_adalora_params *a = &p->adapter.adalora;
        cJSON_AddNumberToObject(o, "target_r", a->target_r);
        cJSON_AddNumberToObject(o, "tinit", (double)a->tinit);
        cJSON_AddNumberToObject(o, "tfinal", (double)a->tfinal);
        cJSON_AddNumberToObject(o, "delta_t", (double)a->delta_t);
        cJSON_AddNumberToObject(o, "ada_beta1", a->beta1);
        cJSON_AddNumberToObject(o, "ada_beta2", a->beta2);
        cJSON_AddNumberToObject(o, "orth_reg", a->orth_reg);
    }
    cJSON_AddNumberToObject(o, "lr", p->optim.lr);
    cJSON_AddNumberToObject(o, "beta1", p->optim.beta1);
    cJSON_AddNumberToObject(o, "beta2", p->optim.beta2);
    cJSON_AddNumberToObject(o, "eps", p->optim.eps);
    cJSON_AddNumberToObject(o, "weight_decay", p->optim.weight_decay);
    cJSON_AddNumberToObject(o, "clip", p->optim.clip);
    cJSON_AddStringToObject(o, "schedule", schedule_str(p->optim.schedule));
    cJSON_AddNumberToObject(o, "warmup", (double)p->optim.warmup_steps);
    cJSON_AddNumberToObject(o, "steps", (double)p->optim.total_steps);
    cJSON_AddNumberToObject(o, "batch", p->batch);
    cJSON_AddNumberToObject(o, "grad_accum", p->grad_accum);
    cJSON_AddNumberToObject(o, "seq_len", p->seq_len);
    cJSON_AddBoolToObject(o, "pack", p->pack);
    cJSON_AddBoolToObject(o, "skip_bad", p->skip_bad);
    cJSON_AddNumberToObject(o, "epochs", (double)p->epochs);
    cJSON_AddNumberToObject(o, "val_split", p->val_split);
    cJSON_AddNumberToObject(o, "label_smoothing", p->label_smoothing);
    cJSON_AddNumberToObject(o, "eval_every", (double)p->eval_every);
    cJSON_AddNumberToObject(o, "eval_batches", p->eval_batches);
    cJSON_AddNumberToObject(o, "save_every", (double)p->save_every);
    cJSON_AddNumberToObject(o, "log_every", (double)p->log_every);
    char seed[32];
    snprintf(seed, sizeof seed, "%" PRIu64, p->seed); /* u64 does not fit a JSON double */
    cJSON_AddStringToObject(o, "seed", seed);
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}

/* Owned copies of the saved options' strings. */
typedef struct saved_strings {
    char *model, *tokenizer, *data, *val, *out;
} saved_strings;

static void saved_free(saved_strings *s) {
    free(s->model);
    free(s->tokenizer);
    free(s->data);
    free(s->val);
    free(s->out);
}

static char *dup_str(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? strdup(v->valuestring) : NULL;
}

static double num(const cJSON *o, const char *k, int *ok) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    if (!cJSON_IsNumber(v)) {
        *ok = 0;
        return 0;
    }
    return v->valuedouble;
}

static lora_status args_from_json(const char *path, lora_train_params *p, saved_strings *ss,
                                  lora_error *err) {
    char       *text;
    size_t      len;
    lora_status st = lora_read_file(path, &text, &len, err);
    if (st != LORA_OK) return st;
    cJSON *o = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: not a JSON object", path);
    }
    int ok = 1;
    *p     = lora_train_params_default();
    memset(ss, 0, sizeof *ss);
    p->model_dir = ss->model = dup_str(o, "model");
    p->tokenizer_dir = ss->tokenizer = dup_str(o, "tokenizer");
    p->data_path = ss->data = dup_str(o, "data");
    p->val_path = ss->val = dup_str(o, "val");
    p->out_dir = ss->out = dup_str(o, "out");
    char *method = dup_str(o, "method"), *sched = dup_str(o, "schedule"),
         *init = dup_str(o, "init"), *seed = dup_str(o, "seed");
    p->adapter.method = method && !strcmp(method, "full")      ? LORA_METHOD_FULL
                        : method && !strcmp(method, "bitfit")  ? LORA_METHOD_BITFIT
                        : method && !strcmp(method, "adalora") ? LORA_METHOD_ADALORA
                                                               : LORA_METHOD_LORA;
    p->optim.schedule = sched && !strcmp(sched, "cosine")     ? LORA_SCHEDULE_COSINE
                        : sched && !strcmp(sched, "constant") ? LORA_SCHEDULE_CONSTANT
                                                              : LORA_SCHEDULE_LINEAR;
    p->adapter.init   = init && !strcmp(init, "gaussian") ? LORA_INIT_GAUSSIAN : LORA_INIT_KAIMING;
    p->seed           = seed ? strtoull(seed, NULL, 10) : 42;
    ok &= method && sched && init && seed && ss->model && ss->data && ss->out;
    free(method);
    free(sched);
    free(init);
    free(seed);
    p->adapter.r            = (int32_t)num(o, "r", &ok);
    p->adapter.alpha        = (float)num(o, "alpha", &ok);
    p->adapter.dropout      = (float)num(o, "dropout", &ok);
    p->adapter.targets      = (uint32_t)num(o, "targets", &ok);
    p->adapter.use_rslora   = (int32_t)num(o, "use_rslora", &ok);
    p->adapter.seed         = p->seed;
    p->optim.lr             = (float)num(o, "lr", &ok);
    p->optim.beta1          = (float)num(o, "beta1", &ok);
    p->optim.beta2          = (float)num(o, "beta2", &ok);
    p->optim.eps            = (float)num(o, "eps", &ok);
    p->optim.weight_decay   = (float)num(o, "weight_decay", &ok);
    p->optim.clip           = (float)num(o, "clip", &ok);
    p->optim.warmup_steps   = (int64_t)num(o, "warmup", &ok);
    p->optim.total_steps    = (int64_t)num(o, "steps", &ok);
    p->batch                = (int32_t)num(o, "batch", &ok);
    p->grad_accum           = (int32_t)num(o, "grad_accum", &ok);
    p->seq_len              = (int32_t)num(o, "seq_len", &ok);
    p->pack                 = (int32_t)num(o, "pack", &ok);
    p->skip_bad             = (int32_t)num(o, "skip_bad", &ok);
    p->epochs               = (int64_t)num(o, "epochs", &ok);
    p->val_split            = (float)num(o, "val_split", &ok);
    p->label_smoothing      = (float)num(o, "label_smoothing", &ok);
    p->eval_every           = (int64_t)num(o, "eval_every", &ok);
    p->eval_batches         = (int32_t)num(o, "eval_batches", &ok);
    p->save_every           = (int64_t)num(o, "save_every", &ok);
    p->log_every            = (int64_t)num(o, "log_every", &ok);
    if (p->adapter.method == LORA_METHOD_ADALORA) {
        lora_adalora_params *a = &p->adapter.adalora;
        a->target_r            = (int32_t)num(o, "target_r", &ok);
        a->tinit               = (int64_t)num(o, "tinit", &ok);
        a->tfinal              = (int64_t)num(o, "tfinal", &ok);
        a->delta_t             = (int64_t)num(o, "delta_t", &ok);
        a->beta1               = (float)num(o, "ada_beta1", &ok);
        a->beta2               = (float)num(o, "ada_beta2", &ok);
        a->orth_reg            = (float)num(o, "orth_reg", &ok);
    }
    cJSON_Delete(o);
    if (!ok) {
        saved_free(ss);
        return lora_errorf(err, LORA_ERR_FORMAT, "%s: missing or mistyped fields", path);
    }
    return LORA_OK;
}

/* ---- the run's state ---- */

typedef struct run {
    const lora_train_params *p;
    lora_train_callback      cb;
    void                    *user;
    lora_model              *m;
    lora_tokenizer          *tok;
    lora_dataset            *train, *val;
    lora_batcher            *tb, *vb;
    int32_t                 *tokens, *targets; /* (B, T) */
    int32_t                  T;
    int64_t                  step, total;
    FILE                    *metrics;
    int                      made_out; /* the output directory did not exist before */
    int                      lock_fd;  /* holds an exclusive flock on out_dir/.lock */
    char                     path[4096];
} run;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void emit(run *r, lora_train_event *ev) {
    if (r->cb) r->cb(r->user, ev);
}

static void info(run *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void info(run *r, const char *fmt, ...) {
    char    msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lora_train_event ev;
    memset(&ev, 0, sizeof ev);
    ev.kind    = LORA_EVENT_INFO;
    ev.step    = r->step;
    ev.message = msg;
    emit(r, &ev);
}

static lora_status out_path(run *r, const char *name, lora_error *err) {
    return lora_path_join(r->path, sizeof r->path, r->p->out_dir, name, err);
}

/*
 * Drops the padded tail that every row of a (B, T) batch shares: positions after the last target
 * >= 0 of every row. Causal attention means those positions influence nothing before them, so
 * the loss and gradients are exactly those of the full batch, for less work. Rows are compacted
 * in place to the new stride; returns the new T (at least 1).
 */
static int32_t trim_batch(int32_t *tokens, int32_t *targets, int32_t B, int32_t T) {
    int32_t keep = 1;
    for (int32_t b = 0; b < B; b++)
        for (int32_t t = T - 1; t >= keep; t--)
            if (targets[(size_t)b * T + t] >= 0) {
                keep = t + 1;
                break;
            }
    if (keep == T) return T;
    for (int32_t b = 1; b < B; b++) {
        memmove(tokens + (size_t)b * keep, tokens + (size_t)b * T, (size_t)keep * sizeof(int32_t));
        memmove(targets + (size_t)b * keep, targets + (size_t)b * T, (size_t)keep * sizeof(int32_t));
    }
    return keep;
}

/* Mean validation loss over up to eval_batches batches, token-weighted. */
static lora_status evaluate(run *r, float *val_loss, lora_error *err) {
    lora_batcher_state s0 = {r->p->seed, 0, 0};
    lora_status        st = lora_batcher_set_state(r->vb, &s0, err);
    if (st != LORA_OK) return st;
    int64_t n = lora_batcher_batches_per_epoch(r->vb);
    if (r->p->eval_batches > 0 && r->p->eval_batches < n) n = r->p->eval_batches;
    double  sum = 0;
    int64_t count = 0;
    lora_model_set_training(r->m, 0);
    lora_model_set_label_smoothing(r->m, 0.0f); /* validation loss is the plain NLL */
    for (int64_t i = 0; i < n; i++) {
        int64_t n_loss;
        float   loss;
        lora_batcher_next(r->vb, r->tokens, r->targets, &n_loss);
        int32_t T = trim_batch(r->tokens, r->targets, r->p->batch, r->T);
        st = lora_model_forward(r->m, r->tokens, r->targets, r->p->batch, T, &loss, err);
        if (st != LORA_OK) break;
        sum += (double)loss * (double)n_loss;
        count += n_loss;
    }
    lora_model_set_training(r->m, 1);
    lora_model_set_label_smoothing(r->m, r->p->label_smoothing);
    *val_loss = count ? (float)(sum / (double)count) : NAN;
    return st;
}

static void metrics_record(run *r, const char *json) {
    if (!r->metrics) return;
    fprintf(r->metrics, "%s\n", json);
    fflush(r->metrics);
}

/* ---- checkpoints ---- */

static lora_status checkpoint_write(run *r, lora_error *err) {
    tparams   *tp = &r->m->tp;
    st_writer *w  = st_writer_new();
    if (!w) return lora_errorf(err, LORA_ERR_NOMEM, "checkpoint: out of memory");
    lora_status st = LORA_OK;
    static const char *const kinds[3] = {"param.", "adam_m.", "adam_v."};
    float *spans[3] = {tp->data, tp->m, tp->v};
    for (int k = 0; k < 3 && st == LORA_OK; k++)
        for (int32_t i = 0; i < tp->n && st == LORA_OK; i++) {
            const tparam *t = &tp->items[i];
            char          name[TPARAM_NAME_MAX + 16];
            snprintf(name, sizeof name, "%s%s", kinds[k], t->name);
            st = st_writer_add(w, name, ST_F32, t->ndim, t->shape, spans[k] + t->offset, err);
        }
    /* the method's own state (AdaLoRA's EMAs and masks) */
    peft_state_view views[64];
    int32_t         n_views = r->m->method && r->m->method->state
                                  ? r->m->method->state(r->m, views, 64)
                                  : 0;
    for (int32_t i = 0; i < n_views && i < 64 && st == LORA_OK; i++) {
        char    name[160];
        int64_t shape[1] = {views[i].numel};
        snprintf(name, sizeof name, "peft_state.%s", views[i].name);
        st = st_writer_add(w, name, ST_F32, 1, shape, views[i].data, err);
    }
    lora_batcher_state bs;
    lora_batcher_get_state(r->tb, &bs);
    char v[64];
#define META(key, fmt, val)                                                                    \
    if (st == LORA_OK) {                                                                       \
        snprintf(v, sizeof v, fmt, val);                                                       \
        st = st_writer_meta(w, key, v, err);                                                   \
    }
    META("step", "%" PRId64, r->step);
    META("adam_t", "%" PRId64, tp->adam_t);
    META("pass", "%" PRIu64, r->m->ctx.pass);
    META("batch_epoch", "%" PRId64, bs.epoch);
    META("batch_cursor", "%" PRId64, bs.cursor);
    META("batch_seed", "%" PRIu64, bs.seed);
    META("total_steps", "%" PRId64, r->total);
#undef META
    if (st == LORA_OK) st = out_path(r, CHECKPOINT_FILE, err);
    if (st == LORA_OK) st = st_writer_write(w, r->path, err);
    st_writer_free(w);
    return st;
}

static lora_status checkpoint_read(run *r, lora_error *err) {
    tparams    *tp = &r->m->tp;
    st_file     f;
    lora_status st = out_path(r, CHECKPOINT_FILE, err);
    if (st == LORA_OK) st = st_open(&f, r->path, err);
    if (st != LORA_OK) return st;
    static const char *const kinds[3] = {"param.", "adam_m.", "adam_v."};
    float *spans[3] = {tp->data, tp->m, tp->v};
    for (int k = 0; k < 3 && st == LORA_OK; k++)
        for (int32_t i = 0; i < tp->n && st == LORA_OK; i++) {
            const tparam *t = &tp->items[i];
            char          name[TPARAM_NAME_MAX + 16];
            snprintf(name, sizeof name, "%s%s", kinds[k], t->name);
            const st_tensor *x = st_find(&f, name);
            if (!x || x->numel != t->numel)
                st = lora_errorf(err, LORA_ERR_FORMAT, "%s: tensor '%s' missing or resized "
                                 "(hint: the checkpoint belongs to another run)", f.path, name);
            else
                st = st_to_f32(spans[k] + t->offset, x, f.path, err);
        }
    peft_state_view views[64];
    int32_t         n_views = r->m->method && r->m->method->state
                                  ? r->m->method->state(r->m, views, 64)
                                  : 0;
    for (int32_t i = 0; i < n_views && i < 64 && st == LORA_OK; i++) {
        char name[160];
        snprintf(name, sizeof name, "peft_state.%s", views[i].name);
        const st_tensor *x = st_find(&f, name);
        if (!x || x->numel != views[i].numel)
            st = lora_errorf(err, LORA_ERR_FORMAT, "%s: state '%s' missing or resized (hint: the "
                             "checkpoint belongs to another run)", f.path, name);
        else
            st = st_to_f32(views[i].data, x, f.path, err);
    }
    const char *keys[7] = {"step", "adam_t", "pass", "batch_epoch", "batch_cursor", "batch_seed",
                           "total_steps"};
    uint64_t    vals[7];
    for (int k = 0; k < 7 && st == LORA_OK; k++) {
        const char *s = st_meta(&f, keys[k]);
        char       *end;
        if (!s || !*s) {
            st = lora_errorf(err, LORA_ERR_FORMAT, "%s: metadata '%s' missing", f.path, keys[k]);
            break;
        }
        vals[k] = strtoull(s, &end, 10);
        if (*end) st = lora_errorf(err, LORA_ERR_FORMAT, "%s: metadata '%s' is not a number",
                                   f.path, keys[k]);
    }
    if (st == LORA_OK) {
        r->step                = (int64_t)vals[0];
        tp->adam_t             = (int64_t)vals[1];
        r->m->ctx.pass         = vals[2];
        lora_batcher_state bs  = {vals[5], (int64_t)vals[3], (int64_t)vals[4]};
        st                     = lora_batcher_set_state(r->tb, &bs, err);
        if (st == LORA_OK && (int64_t)vals[6] != r->total)
            st = lora_errorf(err, LORA_ERR_STATE, "%s: planned %" PRId64 " steps, now %" PRId64
                             " (hint: the data or options changed)", f.path, (int64_t)vals[6],
                             r->total);
    }
    st_close(&f);
    return st;
}

/* Keeps the metrics records up to `step` (a resumed run rewrites what follows). */
static void metrics_truncate(const char *path, int64_t step) {
    char  *text;
    size_t len;
    if (lora_read_file(path, &text, &len, NULL) != LORA_OK) return;
    size_t keep = 0;
    for (char *line = text; line < text + len;) {
        char   *nl   = memchr(line, '\n', (size_t)(text + len - line));
        size_t  n    = nl ? (size_t)(nl - line) + 1 : (size_t)(text + len - line);
        cJSON  *o    = cJSON_ParseWithLength(line, n);
        cJSON  *s    = o ? cJSON_GetObjectItemCaseSensitive(o, "step") : NULL;
        int     take = cJSON_IsNumber(s) && s->valuedouble <= (double)step && nl;
        cJSON_Delete(o);
        if (!take) break;
        keep += n;
        line += n;
    }
    lora_write_file_atomic(path, text, keep, NULL);
    free(text);
}

/* ---- the run ---- */

static lora_status setup(run *r, lora_error *err) {
    const lora_train_params *p = r->p;
    lora_status              st;
    /* an unwritable output directory fails here, before any work; a run that fails before
     * training removes the (still empty) directories it made */
    struct stat sb;
    r->made_out = stat(p->out_dir, &sb) != 0;
    if ((st = lora_mkdirs(p->out_dir, err)) != LORA_OK) return st;
    /* one run per directory: two writers would interleave checkpoints */
    if ((st = out_path(r, LOCK_FILE, err)) != LORA_OK) return st;
    r->lock_fd = open(r->path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (r->lock_fd < 0)
        return lora_errorf(err, LORA_ERR_IO, "%s: cannot create: %s", r->path, strerror(errno));
    if (flock(r->lock_fd, LOCK_EX | LOCK_NB) != 0)
        return lora_errorf(err, LORA_ERR_STATE, "%s: another training run is using this "
                           "directory", p->out_dir);

    if ((st = lora_model_load(p->model_dir, &r->m, err)) != LORA_OK) return st;
    const lora_config *cfg = lora_model_config(r->m);
    r->T = p->seq_len > 0 ? p->seq_len : (cfg->n_positions < 512 ? cfg->n_positions : 512);
    if (r->T > cfg->n_positions)
        return lora_errorf(err, LORA_ERR_ARG, "--seq-len %d exceeds the model's context (%d)",
                           (int)r->T, (int)cfg->n_positions);
    const char *tdir = p->tokenizer_dir ? p->tokenizer_dir : p->model_dir;
    if ((st = lora_tokenizer_load(tdir, &r->tok, err)) != LORA_OK) return st;
    if (lora_tokenizer_n_vocab(r->tok) > cfg->vocab_size)
        return lora_errorf(err, LORA_ERR_SHAPE, "%s: tokenizer has %d tokens but the model's "
                           "vocab_size is %d", tdir, (int)lora_tokenizer_n_vocab(r->tok),
                           (int)cfg->vocab_size);

    char cache[4096];
    if ((st = lora_path_join(cache, sizeof cache, p->out_dir, "cache", err)) != LORA_OK) return st;
    /* packing cuts the stream into rows itself: nothing is truncated then */
    lora_dataset_params dp = {p->pack ? (1 << 30) : r->T, p->skip_bad, cache};
    lora_dataset_stats  ds;
    if ((st = lora_dataset_load(p->data_path, r->tok, &dp, &r->train, &ds, err)) != LORA_OK)
        return st;
    info(r, "%s: %" PRId64 " examples, %" PRId64 " tokens (%" PRId64 " with loss)%s",
         p->data_path, ds.n_examples, ds.n_tokens, ds.n_loss_tokens,
         ds.from_cache ? ", from the tokenized cache" : "");
    if (ds.n_bad) info(r, "%s: skipped %" PRId64 " malformed lines", p->data_path, ds.n_bad);
    if (ds.n_truncated)
        info(r, "%s: %" PRId64 " examples longer than %d tokens were truncated", p->data_path,
             ds.n_truncated, (int)r->T + 1);
    if (p->val_path) {
        if ((st = lora_dataset_load(p->val_path, r->tok, &dp, &r->val, &ds, err)) != LORA_OK)
            return st;
    } else if (p->val_split > 0) {
        if ((st = lora_dataset_split(r->train, p->val_split, p->seed, &r->val, err)) != LORA_OK)
            return st;
    }
    if ((st = lora_batcher_new(r->train, p->batch, r->T, p->pack, 1, p->seed, &r->tb, err)))
        return st;
    if (r->val && (st = lora_batcher_new(r->val, p->batch, r->T, 0, 0, p->seed, &r->vb, err)))
        return st;
    int64_t per_epoch = lora_batcher_batches_per_epoch(r->tb);
    r->total          = p->optim.total_steps > 0
                            ? p->optim.total_steps
                            : (p->epochs * per_epoch + p->grad_accum - 1) / p->grad_accum;
    if (r->total <= 0) return lora_errorf(err, LORA_ERR_ARG, "nothing to train: 0 steps");

    if (!p->resume_dir) { /* the run's options, for --resume */
        char *args = args_to_json(p);
        if (!args) return lora_errorf(err, LORA_ERR_NOMEM, "out of memory");
        st = out_path(r, ARGS_FILE, err);
        if (st == LORA_OK) st = lora_write_file_atomic(r->path, args, strlen(args), err);
        free(args);
        if (st != LORA_OK) return st;
    }

    lora_adapter_params ap = p->adapter;
    ap.seed                = p->seed;
    ap.adalora.total_step  = r->total; /* AdaLoRA's budget schedule spans the whole run */
    if ((st = lora_model_attach(r->m, &ap, err)) != LORA_OK) return st;
    if ((st = lora_model_set_checkpointing(r->m, p->checkpoint_activations, err)) != LORA_OK ||
        (st = lora_model_reserve(r->m, p->batch, r->T, err)) != LORA_OK)
        return st;
    lora_model_set_training(r->m, 1);
    lora_model_set_label_smoothing(r->m, p->label_smoothing);
    size_t n = (size_t)p->batch * (size_t)r->T;
    r->tokens  = malloc(n * sizeof(int32_t));
    r->targets = malloc(n * sizeof(int32_t));
    if (!r->tokens || !r->targets) return lora_errorf(err, LORA_ERR_NOMEM, "out of memory");

    if (p->resume_dir) {
        if ((st = checkpoint_read(r, err)) != LORA_OK) return st;
        info(r, "resuming at step %" PRId64 " of %" PRId64, r->step, r->total);
    }
    if ((st = out_path(r, METRICS_FILE, err)) != LORA_OK) return st;
    if (p->resume_dir) metrics_truncate(r->path, r->step);
    r->metrics = fopen(r->path, p->resume_dir ? "a" : "w");
    if (!r->metrics) return lora_errorf(err, LORA_ERR_IO, "%s: cannot open for writing", r->path);
    info(r, "training %" PRId64 " trainable parameters (%.4f%% of %" PRId64 ") for %" PRId64
         " steps, %" PRId64 " batches per epoch", lora_model_n_trainable_params(r->m),
         100.0 * (double)lora_model_n_trainable_params(r->m) /
             (double)lora_model_n_base_params(r->m),
         lora_model_n_base_params(r->m), r->total, per_epoch);
    return LORA_OK;
}

static lora_status save_outputs(run *r, lora_error *err) {
    char name[256];
    snprintf(name, sizeof name, "%s", r->p->model_dir);
    if (r->p->adapter.method == LORA_METHOD_LORA || r->p->adapter.method == LORA_METHOD_ADALORA)
        return lora_adapter_save(r->m, r->p->out_dir, name, err);
    return lora_model_save_hf(r->m, r->p->out_dir, LORA_DTYPE_F32, err);
}

static lora_status train_loop(run *r, const volatile int *stop, lora_error *err) {
    const lora_train_params *p   = r->p;
    lora_optim_params        o   = p->optim;
    lora_status              st  = LORA_OK;
    double                   t0  = now_s();
    int64_t                  s0  = r->step, tokens_done = 0;
    int                      stopped = 0;
    o.total_steps = r->total;
    if (o.warmup_steps < 0) o.warmup_steps = r->total / 10 < 500 ? r->total / 10 : 500;
    if (r->vb && p->eval_every > 0 && r->step == 0) { /* the starting point, for comparison */
        float vl;
        if ((st = evaluate(r, &vl, err)) != LORA_OK) return st;
        lora_train_event ev;
        memset(&ev, 0, sizeof ev);
        ev.kind        = LORA_EVENT_EVAL;
        ev.total_steps = r->total;
        ev.val_loss    = vl;
        emit(r, &ev);
        char line[200];
        snprintf(line, sizeof line, "{\"step\": 0, \"val_loss\": %.9g, \"val_ppl\": %.6g}",
                 (double)vl, exp((double)vl));
        metrics_record(r, line);
    }
    while (r->step < r->total) {
        float  loss_sum = 0, gn = 0;
        double lr       = lora_schedule_lr(&o, r->step);
        lora_model_zero_grad(r->m);
        for (int32_t a = 0; a < p->grad_accum; a++) {
            int64_t n_loss;
            float   loss;
            lora_batcher_next(r->tb, r->tokens, r->targets, &n_loss);
            int32_t T = trim_batch(r->tokens, r->targets, p->batch, r->T);
            st = lora_model_forward(r->m, r->tokens, r->targets, p->batch, T, &loss, err);
            if (st == LORA_OK) st = lora_model_backward(r->m, err);
            if (st != LORA_OK) return st;
            loss_sum += loss;
            tokens_done += (int64_t)p->batch * T;
        }
        if (p->grad_accum > 1) lora_model_scale_grad(r->m, 1.0f / (float)p->grad_accum);
        if ((st = lora_model_step(r->m, &o, (float)lr, &gn, err)) != LORA_OK) return st;
        r->step++;
        double           el = now_s() - t0;
        lora_train_event ev;
        memset(&ev, 0, sizeof ev);
        ev.kind         = LORA_EVENT_STEP;
        ev.step         = r->step;
        ev.total_steps  = r->total;
        ev.loss         = loss_sum / (float)p->grad_accum;
        ev.lr           = (float)lr;
        ev.grad_norm    = gn;
        ev.elapsed_s    = el;
        ev.tokens_per_s = el > 0 ? (double)tokens_done / el : 0;
        ev.eta_s        = (double)(r->total - r->step) * el / (double)(r->step - s0);
        ev.val_loss     = NAN;
        emit(r, &ev);
        if (p->log_every > 0 && (r->step % p->log_every == 0 || r->step == r->total)) {
            char line[320];
            snprintf(line, sizeof line, "{\"step\": %" PRId64 ", \"loss\": %.9g, \"lr\": %.9g, "
                     "\"grad_norm\": %.6g, \"tokens_per_s\": %.1f, \"elapsed_s\": %.3f}",
                     r->step, (double)ev.loss, lr, (double)gn, ev.tokens_per_s, el);
            metrics_record(r, line);
        }
        int last = r->step == r->total;
        if (r->vb && ((p->eval_every > 0 && r->step % p->eval_every == 0) || last)) {
            float vl;
            if ((st = evaluate(r, &vl, err)) != LORA_OK) return st;
            ev.kind     = LORA_EVENT_EVAL;
            ev.val_loss = vl;
            emit(r, &ev);
            char line[200];
            snprintf(line, sizeof line, "{\"step\": %" PRId64 ", \"val_loss\": %.9g, "
                     "\"val_ppl\": %.6g}", r->step, (double)vl, exp((double)vl));
            metrics_record(r, line);
        }
        stopped = (stop && *stop) || (p->stop_after > 0 && r->step >= p->stop_after && !last);
        if (stopped || last || (p->save_every > 0 && r->step % p->save_every == 0)) {
            if ((st = checkpoint_write(r, err)) != LORA_OK) return st;
            ev.kind = LORA_EVENT_CHECKPOINT;
            emit(r, &ev);
        }
        if (stopped) break;
    }
    if ((st = save_outputs(r, err)) != LORA_OK) return st;
    lora_train_event done;
    memset(&done, 0, sizeof done);
    done.kind        = LORA_EVENT_DONE;
    done.step        = r->step;
    done.total_steps = r->total;
    done.stopped     = stopped;
    done.elapsed_s   = now_s() - t0;
    emit(r, &done);
    return LORA_OK;
}

lora_status lora_train(const lora_train_params *params, const volatile int *stop,
                       lora_train_callback cb, void *user, lora_error *err) {
    lora_train_params p = *params;
    saved_strings     ss;
    memset(&ss, 0, sizeof ss);
    lora_status st;
    if (params->resume_dir) {
        char path[4096];
        if ((st = lora_path_join(path, sizeof path, params->resume_dir, ARGS_FILE, err)))
            return st;
        if ((st = args_from_json(path, &p, &ss, err)) != LORA_OK) return st;
        p.resume_dir = params->resume_dir;
        p.out_dir    = params->resume_dir; /* the run continues where it is */
        p.stop_after = params->stop_after;
        p.checkpoint_activations = params->checkpoint_activations;
    }
    if (!p.model_dir || !p.data_path || !p.out_dir) {
        saved_free(&ss);
        return lora_errorf(err, LORA_ERR_ARG, "training needs a model, data and an output dir");
    }
    if (p.batch <= 0 || p.grad_accum <= 0 || p.seq_len < 0 || p.epochs < 0 ||
        !(p.val_split >= 0 && p.val_split < 1) || !(p.label_smoothing >= 0 && p.label_smoothing < 1)) {
        saved_free(&ss);
        return lora_errorf(err, LORA_ERR_ARG, "invalid training options");
    }
    run r;
    memset(&r, 0, sizeof r);
    r.p    = &p;
    r.cb   = cb;
    r.user    = user;
    r.lock_fd = -1;
    st        = setup(&r, err);
    if (st != LORA_OK && r.made_out) { /* leave nothing behind but what existed */
        char path[4096];
        if (lora_path_join(path, sizeof path, p.out_dir, "cache", NULL) == LORA_OK) rmdir(path);
        if (lora_path_join(path, sizeof path, p.out_dir, LOCK_FILE, NULL) == LORA_OK)
            unlink(path);
        rmdir(p.out_dir);
    }
    if (st == LORA_OK) st = train_loop(&r, stop, err);
    if (r.metrics) fclose(r.metrics);
    free(r.tokens);
    free(r.targets);
    lora_batcher_free(r.tb);
    lora_batcher_free(r.vb);
    lora_dataset_free(r.train);
    lora_dataset_free(r.val);
    lora_tokenizer_free(r.tok);
    lora_model_free(r.m);
    if (r.lock_fd >= 0) close(r.lock_fd);
    saved_free(&ss);
    return st;
}
