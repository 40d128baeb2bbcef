/*
 * test_hf_config.c — config.json parsing (GPT-2's own config, defaults, the n_ctx fallback,
 * activations), refusal of malformed or unsupported configs with "<path>: <problem>", and the
 * writer: what it writes reads back, and carries the fields transformers' GPT2LMHeadModel needs.
 */
#include "io/fileutil.h"
#include "io/hf_config.h"
#include "test_helper.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <ftw.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[1024];

/* The config.json of openai-community/gpt2 as published. */
static const char *GPT2_CONFIG = "{\n"
                                 "  \"activation_function\": \"gelu_new\",\n"
                                 "  \"architectures\": [\"GPT2LMHeadModel\"],\n"
                                 "  \"attn_pdrop\": 0.1,\n"
                                 "  \"bos_token_id\": 50256,\n"
                                 "  \"embd_pdrop\": 0.1,\n"
                                 "  \"eos_token_id\": 50256,\n"
                                 "  \"initializer_range\": 0.02,\n"
                                 "  \"layer_norm_epsilon\": 1e-05,\n"
                                 "  \"model_type\": \"gpt2\",\n"
                                 "  \"n_ctx\": 1024,\n"
                                 "  \"n_embd\": 768,\n"
                                 "  \"n_head\": 12,\n"
                                 "  \"n_layer\": 12,\n"
                                 "  \"n_positions\": 1024,\n"
                                 "  \"resid_pdrop\": 0.1,\n"
                                 "  \"summary_activation\": null,\n"
                                 "  \"summary_first_dropout\": 0.1,\n"
                                 "  \"summary_proj_to_labels\": true,\n"
                                 "  \"summary_type\": \"cls_index\",\n"
                                 "  \"summary_use_proj\": true,\n"
                                 "  \"task_specific_params\": {\"text-generation\": "
                                 "{\"do_sample\": true, \"max_length\": 50}},\n"
                                 "  \"vocab_size\": 50257\n"
                                 "}\n";

/* A minimal valid config; the tests splice one more field into it. */
#define BASE                                                                                       \
    "\"n_layer\": 2, \"n_head\": 4, \"n_embd\": 64, \"n_positions\": 128, \"vocab_size\": 100"

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static char g_fallback[64]; /* the scratch directory made when LORA_TEST_TMP is unset */

static void setup_dir(void) {
    const char *base = getenv("LORA_TEST_TMP");
    if (!base || !base[0]) {
        snprintf(g_fallback, sizeof g_fallback, "/tmp/lora_test_%ld", (long)getpid());
        base = g_fallback;
    }
    snprintf(g_dir, sizeof g_dir, "%s/test_hf_config", base);
    nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    lora_error err;
    if (lora_mkdirs(g_dir, &err) != LORA_OK) {
        fprintf(stderr, "cannot create %s: %s\n", g_dir, err.msg);
        exit(1);
    }
}

static int no_temporaries(const char *prefix) {
    DIR *d = opendir(g_dir);
    int  n = 0;
    if (!d) return 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n == 0;
}

static lora_status parse(const char *json, lora_config *c, lora_error *err) {
    memset(err, 0, sizeof *err);
    return hf_config_parse(json, "m/config.json", c, err);
}

static void expect_ok(const char *what, const char *json, lora_config *c) {
    lora_error  err;
    lora_status s = parse(json, c, &err);
    test_condf(s == LORA_OK, "%s: refused: %s", what, err.msg);
}

static void expect_bad(const char *what, const char *json, lora_status want, const char *needle) {
    lora_error  err;
    lora_config c, before;
    memset(&c, 0x5a, sizeof c);
    before        = c;
    lora_status s = parse(json, &c, &err);
    test_condf(s == want, "%s: status %d (%s), want %d; %s", what, (int)s, lora_status_str(s),
               (int)want, err.msg);
    test_condf(strncmp(err.msg, "m/config.json: ", 15) == 0 && strstr(err.msg, needle),
               "%s: message lacks the path or '%s': %s", what, needle, err.msg);
    test_condf(strchr(err.msg, '\n') == NULL, "%s: not one line: %s", what, err.msg);
    test_condf(memcmp(&c, &before, sizeof c) == 0, "%s: config written on failure", what);
}

static void test_gpt2(void) {
    lora_config c;
    expect_ok("gpt2", GPT2_CONFIG, &c);
    test_cond("gpt2 sizes", c.n_layer == 12 && c.n_head == 12 && c.n_embd == 768 &&
                                c.n_positions == 1024 && c.n_inner == 3072 &&
                                c.vocab_size == 50257);
    test_cond("gpt2 eps", c.layer_norm_epsilon == 1e-5f);
    test_cond("gpt2 activation", c.activation == LORA_ACT_GELU_TANH);
    test_cond("gpt2 tied", c.tie_word_embeddings == 1);

    expect_ok("minimal", "{" BASE "}", &c);
    test_cond("defaults", c.n_inner == 256 && c.layer_norm_epsilon == 1e-5f &&
                              c.activation == LORA_ACT_GELU_TANH && c.tie_word_embeddings == 1);

    expect_ok("n_ctx fallback",
              "{\"n_layer\": 1, \"n_head\": 1, \"n_embd\": 8, \"n_ctx\": 77, \"vocab_size\": 5}",
              &c);
    test_cond("n_ctx used", c.n_positions == 77);
    expect_ok("n_positions wins", "{" BASE ", \"n_ctx\": 7}", &c);
    test_cond("n_positions kept", c.n_positions == 128);

    expect_ok("n_inner", "{" BASE ", \"n_inner\": 100}", &c);
    test_cond("n_inner read", c.n_inner == 100);
    expect_ok("n_inner null", "{" BASE ", \"n_inner\": null}", &c);
    test_cond("n_inner null = 4 n_embd", c.n_inner == 256);
    expect_ok("integral float", "{" BASE ", \"n_inner\": 100.0}", &c);
    test_cond("100.0 read as 100", c.n_inner == 100);

    expect_ok("eps", "{" BASE ", \"layer_norm_epsilon\": 1e-6}", &c);
    test_cond("eps read", c.layer_norm_epsilon == 1e-6f);
    expect_ok("untied", "{" BASE ", \"tie_word_embeddings\": false}", &c);
    test_cond("untied read", c.tie_word_embeddings == 0);

    const char *tanh_names[] = {"gelu_new", "gelu_pytorch_tanh", "gelu_fast"};
    for (int i = 0; i < 3; i++) {
        char json[512];
        snprintf(json, sizeof json, "{" BASE ", \"activation_function\": \"%s\"}", tanh_names[i]);
        c.activation = LORA_ACT_GELU_ERF;
        expect_ok(tanh_names[i], json, &c);
        test_condf(c.activation == LORA_ACT_GELU_TANH, "%s is the tanh GELU", tanh_names[i]);
    }
    expect_ok("gelu", "{" BASE ", \"activation_function\": \"gelu\"}", &c);
    test_cond("gelu is the erf GELU", c.activation == LORA_ACT_GELU_ERF);

    expect_ok("default-valued flags",
              "{" BASE ", \"scale_attn_weights\": true, \"scale_attn_by_inverse_layer_idx\": "
              "false, \"reorder_and_upcast_attn\": false, \"model_type\": \"gpt2\"}",
              &c);
}

static void test_bad(void) {
    expect_bad("malformed", "{\"n_layer\": 2,,}", LORA_ERR_FORMAT, "not valid JSON (line 1");
    expect_bad("malformed line", "{\n\"n_layer\": 2,\n\"n_head\" 4}", LORA_ERR_FORMAT, "line 3");
    expect_bad("empty", "", LORA_ERR_FORMAT, "not valid JSON");
    expect_bad("array", "[1, 2]", LORA_ERR_FORMAT, "not a JSON object");
    expect_bad("number", "42", LORA_ERR_FORMAT, "not a JSON object");
    expect_bad("trailing", "{" BASE "} x", LORA_ERR_FORMAT, "after the JSON object");

    const char *required[] = {"n_layer", "n_head", "n_embd", "n_positions", "vocab_size"};
    const char *values[]   = {"2", "4", "64", "128", "100"};
    for (int skip = 0; skip < 5; skip++) {
        char json[512] = "{", want[64];
        int  first     = 1;
        for (int i = 0; i < 5; i++) {
            if (i == skip) continue;
            strcat(json, first ? "" : ", ");
            strcat(json, "\"");
            strcat(json, required[i]);
            strcat(json, "\": ");
            strcat(json, values[i]);
            first = 0;
        }
        strcat(json, "}");
        snprintf(want, sizeof want, "missing required field '%s'", required[skip]);
        expect_bad(want, json, LORA_ERR_FORMAT, want);
    }

    expect_bad("string size",
               "{\"n_layer\": 2, \"n_head\": 4, \"n_embd\": \"64\", \"n_positions\": 8, "
               "\"vocab_size\": 100}",
               LORA_ERR_FORMAT, "'n_embd' must be an integer, not a string");
    expect_bad("null size",
               "{\"n_layer\": null, \"n_head\": 4, \"n_embd\": 64, \"n_positions\": 8, "
               "\"vocab_size\": 100}",
               LORA_ERR_FORMAT, "'n_layer' must be an integer, not null");
    expect_bad("fractional size",
               "{\"n_layer\": 2.5, \"n_head\": 4, \"n_embd\": 64, \"n_positions\": 8, "
               "\"vocab_size\": 100}",
               LORA_ERR_FORMAT, "'n_layer'");
    expect_bad("zero size",
               "{\"n_layer\": 0, \"n_head\": 4, \"n_embd\": 64, \"n_positions\": 8, "
               "\"vocab_size\": 100}",
               LORA_ERR_FORMAT, "positive integer");
    expect_bad("negative size",
               "{\"n_layer\": 2, \"n_head\": 4, \"n_embd\": 64, \"n_positions\": 8, "
               "\"vocab_size\": -100}",
               LORA_ERR_FORMAT, "'vocab_size'");
    expect_bad("huge size",
               "{\"n_layer\": 2, \"n_head\": 4, \"n_embd\": 64, \"n_positions\": 1e12, "
               "\"vocab_size\": 100}",
               LORA_ERR_FORMAT, "'n_positions'");
    expect_bad("n_ctx wrong type",
               "{\"n_layer\": 2, \"n_head\": 4, \"n_embd\": 64, \"n_ctx\": [8], "
               "\"vocab_size\": 100}",
               LORA_ERR_FORMAT, "'n_ctx' must be an integer, not an array");
    expect_bad("n_inner string", "{" BASE ", \"n_inner\": \"256\"}", LORA_ERR_FORMAT, "'n_inner'");
    expect_bad("n_inner zero", "{" BASE ", \"n_inner\": 0}", LORA_ERR_FORMAT, "'n_inner'");
    expect_bad("n_embd too large for n_inner",
               "{\"n_layer\": 1, \"n_head\": 1, \"n_embd\": 1000000000, \"n_positions\": 8, "
               "\"vocab_size\": 10}",
               LORA_ERR_FORMAT, "too large");
    expect_bad("eps string", "{" BASE ", \"layer_norm_epsilon\": \"1e-5\"}", LORA_ERR_FORMAT,
               "'layer_norm_epsilon' must be a number");
    expect_bad("eps zero", "{" BASE ", \"layer_norm_epsilon\": 0}", LORA_ERR_FORMAT,
               "layer_norm_epsilon");
    expect_bad("eps negative", "{" BASE ", \"layer_norm_epsilon\": -1e-5}", LORA_ERR_FORMAT,
               "layer_norm_epsilon");
    expect_bad("activation number", "{" BASE ", \"activation_function\": 5}", LORA_ERR_FORMAT,
               "'activation_function' must be a string");
    expect_bad("tie string", "{" BASE ", \"tie_word_embeddings\": \"yes\"}", LORA_ERR_FORMAT,
               "'tie_word_embeddings' must be true or false");
    expect_bad("tie number", "{" BASE ", \"tie_word_embeddings\": 1}", LORA_ERR_FORMAT,
               "'tie_word_embeddings'");

    expect_bad("n_embd % n_head",
               "{\"n_layer\": 2, \"n_head\": 5, \"n_embd\": 64, \"n_positions\": 8, "
               "\"vocab_size\": 100}",
               LORA_ERR_FORMAT, "n_embd 64 is not divisible by n_head 5");

    expect_bad("relu", "{" BASE ", \"activation_function\": \"relu\"}", LORA_ERR_UNSUPPORTED,
               "unsupported activation_function 'relu'");
    expect_bad("quick_gelu", "{" BASE ", \"activation_function\": \"quick_gelu\"}",
               LORA_ERR_UNSUPPORTED, "'quick_gelu'");
    expect_bad("control bytes in a value", "{" BASE ", \"activation_function\": \"a\\nb\"}",
               LORA_ERR_UNSUPPORTED, "'a?b'");
    expect_bad("inverse layer idx", "{" BASE ", \"scale_attn_by_inverse_layer_idx\": true}",
               LORA_ERR_UNSUPPORTED, "scale_attn_by_inverse_layer_idx = true is not supported");
    expect_bad("reorder and upcast", "{" BASE ", \"reorder_and_upcast_attn\": true}",
               LORA_ERR_UNSUPPORTED, "reorder_and_upcast_attn");
    expect_bad("no attention scaling", "{" BASE ", \"scale_attn_weights\": false}",
               LORA_ERR_UNSUPPORTED, "scale_attn_weights = false");
    expect_bad("flag wrong type", "{" BASE ", \"scale_attn_weights\": \"no\"}", LORA_ERR_FORMAT,
               "'scale_attn_weights' must be true or false");
    expect_bad("model_type", "{" BASE ", \"model_type\": \"llama\"}", LORA_ERR_UNSUPPORTED,
               "model_type 'llama'");
}

/* Every prefix of a valid config either parses or fails cleanly. */
static void test_truncations(void) {
    size_t n   = strlen(GPT2_CONFIG);
    char  *buf = malloc(n + 1);
    int    ok = 0, clean = 1;
    for (size_t len = 0; len < n; len++) {
        memcpy(buf, GPT2_CONFIG, len);
        buf[len] = '\0';
        lora_config c;
        lora_error  err;
        lora_status s = parse(buf, &c, &err);
        if (s == LORA_OK)
            ok++;
        else if (strncmp(err.msg, "m/config.json: ", 15) != 0)
            clean = 0;
    }
    free(buf);
    /* Only the prefix that drops just the final newline is still a whole config. */
    test_condf(ok == 1, "%d truncated configs accepted", ok);
    test_cond("truncations fail cleanly", clean);
}

static void test_files(void) {
    char        path[2048], bad[2048];
    lora_error  err;
    lora_config c;

    snprintf(path, sizeof path, "%s/config.json", g_dir);
    test_cond("write gpt2 text",
              lora_write_file_atomic(path, GPT2_CONFIG, strlen(GPT2_CONFIG), &err) == LORA_OK);
    test_condf(hf_config_load(path, &c, &err) == LORA_OK && c.n_embd == 768, "load: %s", err.msg);

    snprintf(bad, sizeof bad, "%s/missing.json", g_dir);
    lora_status s = hf_config_load(bad, &c, &err);
    test_condf(s == LORA_ERR_MISSING && strstr(err.msg, bad) == err.msg, "missing: %d %s", (int)s,
               err.msg);

    snprintf(bad, sizeof bad, "%s/nul.json", g_dir);
    lora_write_file_atomic(bad, "{\"n_layer\": 2}\0garbage", 22, &err);
    s = hf_config_load(bad, &c, &err);
    test_condf(s == LORA_ERR_FORMAT && strstr(err.msg, bad), "NUL byte: %d %s", (int)s, err.msg);

    snprintf(bad, sizeof bad, "%s/bad.json", g_dir);
    lora_write_file_atomic(bad, "{\"n_layer\": ", 12, &err);
    s = hf_config_load(bad, &c, &err);
    test_condf(s == LORA_ERR_FORMAT && strstr(err.msg, bad) == err.msg &&
                   strstr(err.msg, "not valid JSON"),
               "bad JSON file: %d %s", (int)s, err.msg);
}

static void check_written(const char *path, const lora_config *c, const char *dtype) {
    char      *text = NULL;
    size_t     len  = 0;
    lora_error err;
    if (lora_read_file(path, &text, &len, &err) != LORA_OK) {
        test_condf(0, "read back: %s", err.msg);
        return;
    }
    test_cond("ends with a newline", len > 0 && text[len - 1] == '\n');
    cJSON *j = cJSON_Parse(text);
    test_cond("written config is JSON", cJSON_IsObject(j));
    if (!j) {
        free(text);
        return;
    }
#define NUM(k) cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(j, k))
#define STR(k) cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, k))
    cJSON *arch = cJSON_GetObjectItemCaseSensitive(j, "architectures");
    test_cond("architectures",
              cJSON_GetArraySize(arch) == 1 &&
                  !strcmp(cJSON_GetStringValue(cJSON_GetArrayItem(arch, 0)), "GPT2LMHeadModel"));
    test_cond("model_type", STR("model_type") && !strcmp(STR("model_type"), "gpt2"));
    test_cond("torch_dtype", STR("torch_dtype") && !strcmp(STR("torch_dtype"), dtype));
    test_cond("sizes", NUM("n_layer") == c->n_layer && NUM("n_head") == c->n_head &&
                           NUM("n_embd") == c->n_embd && NUM("n_positions") == c->n_positions &&
                           NUM("n_ctx") == c->n_positions && NUM("vocab_size") == c->vocab_size);
    test_cond("bos/eos",
              NUM("bos_token_id") == c->vocab_size - 1 && NUM("eos_token_id") == c->vocab_size - 1);
    test_cond("dropouts", NUM("attn_pdrop") == 0.1 && NUM("embd_pdrop") == 0.1 &&
                              NUM("resid_pdrop") == 0.1 && NUM("summary_first_dropout") == 0.1);
    cJSON *ni = cJSON_GetObjectItemCaseSensitive(j, "n_inner");
    if (c->n_inner == 4 * c->n_embd)
        test_cond("n_inner null", cJSON_IsNull(ni));
    else
        test_cond("n_inner number", cJSON_IsNumber(ni) && ni->valuedouble == c->n_inner);
    cJSON *tie = cJSON_GetObjectItemCaseSensitive(j, "tie_word_embeddings");
    test_cond("tie",
              cJSON_IsBool(tie) && (cJSON_IsTrue(tie) != 0) == (c->tie_word_embeddings != 0));
    test_cond("activation name",
              STR("activation_function") &&
                  !strcmp(STR("activation_function"),
                          c->activation == LORA_ACT_GELU_ERF ? "gelu" : "gelu_new"));
#undef NUM
#undef STR
    cJSON_Delete(j);
    free(text);
}

static void test_write(void) {
    char        path[2048];
    lora_error  err;
    lora_config c, back;
    snprintf(path, sizeof path, "%s/written.json", g_dir);

    expect_ok("gpt2", GPT2_CONFIG, &c);
    test_condf(hf_config_write(path, &c, "float32", &err) == LORA_OK, "write: %s", err.msg);
    check_written(path, &c, "float32");
    test_cond("round trip",
              hf_config_load(path, &back, &err) == LORA_OK && !memcmp(&back, &c, sizeof c));

    char  *text = NULL;
    size_t len;
    lora_read_file(path, &text, &len, &err);
    test_cond("epsilon written as 1e-05", text && strstr(text, "1e-05") != NULL);
    free(text);

    lora_config d = {3, 2, 10, 16, 24, 7, 1e-6f, LORA_ACT_GELU_ERF, 0};
    test_condf(hf_config_write(path, &d, "bfloat16", &err) == LORA_OK, "write 2: %s", err.msg);
    check_written(path, &d, "bfloat16");
    test_cond("round trip 2",
              hf_config_load(path, &back, &err) == LORA_OK && !memcmp(&back, &d, sizeof d));
    test_cond("no temporary left", no_temporaries("written.json.tmp."));

    lora_config bad = d;
    bad.n_head      = 3;
    test_cond("invalid config refused",
              hf_config_write(path, &bad, "float32", &err) == LORA_ERR_ARG &&
                  strstr(err.msg, "divisible"));
    bad         = d;
    bad.n_layer = 0;
    test_cond("zero layers refused", hf_config_write(path, &bad, "float32", &err) == LORA_ERR_ARG);
    test_cond("bad torch_dtype refused",
              hf_config_write(path, &d, "float64", &err) == LORA_ERR_ARG && strstr(err.msg, path) &&
                  strstr(err.msg, "torch_dtype"));
    test_cond("file untouched by refused writes",
              hf_config_load(path, &back, &err) == LORA_OK && !memcmp(&back, &d, sizeof d));

    char nodir[2100];
    snprintf(nodir, sizeof nodir, "%s/no/such/config.json", g_dir);
    lora_status s = hf_config_write(nodir, &d, "float16", &err);
    test_condf(s == LORA_ERR_IO && strstr(err.msg, nodir), "missing directory: %d %s", (int)s,
               err.msg);
}

int main(void) {
    setup_dir();
    test_gpt2();
    test_bad();
    test_truncations();
    test_files();
    test_write();
    if (g_fallback[0]) nftw(g_fallback, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return test_report("test_hf_config");
}
