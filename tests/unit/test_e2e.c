/*
 * test_e2e.c — the synthetic E2E-style task: determinism under a seed, disjoint splits, held-out
 * name x food pairs, every reference realising every slot (the slot checker finds nothing
 * missing, wrong or added), grammar variety (distinct delexicalised skeletons), the slot-count
 * distribution, and the files written (JSONL fields, UTF-8 passthrough, grouped references).
 */
#include "test_helper.h"

#include "data/e2e.h"
#include "eval/metrics.h"

#include <cjson/cJSON.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static lora_e2e_dataset *make(uint64_t seed, int32_t train, int32_t dev, int32_t test) {
    lora_e2e_params p = lora_e2e_params_default();
    p.seed            = seed;
    p.n_train         = train;
    p.n_dev           = dev;
    p.n_test          = test;
    lora_e2e_dataset *ds;
    lora_error        err;
    lora_status       st = lora_e2e_generate(&p, &ds, &err);
    test_condf(st == LORA_OK, "generate: %s", err.msg);
    return st == LORA_OK ? ds : NULL;
}

static int same_dataset(const lora_e2e_dataset *a, const lora_e2e_dataset *b) {
    for (int sp = 0; sp < 3; sp++) {
        const lora_e2e_split *x = &a->split[sp], *y = &b->split[sp];
        if (x->n_items != y->n_items || x->n_refs != y->n_refs) return 0;
        for (int32_t i = 0; i < x->n_items; i++) {
            if (memcmp(&x->items[i].mr, &y->items[i].mr, sizeof x->items[i].mr) ||
                x->items[i].n_refs != y->items[i].n_refs)
                return 0;
            for (int32_t j = 0; j < x->items[i].n_refs; j++)
                if (strcmp(x->items[i].refs[j], y->items[i].refs[j])) return 0;
        }
    }
    return 1;
}

static void test_determinism(void) {
    lora_e2e_dataset *a = make(42, 500, 80, 40), *b = make(42, 500, 80, 40),
                     *c = make(43, 500, 80, 40);
    if (!a || !b || !c) goto done;
    test_cond("same seed, same data", same_dataset(a, b));
    test_cond("other seed, other data", !same_dataset(a, c));
    test_cond("exact pair counts",
              a->split[0].n_refs == 500 && a->split[1].n_refs == 80 && a->split[2].n_items == 40);
done:
    lora_e2e_dataset_free(a);
    lora_e2e_dataset_free(b);
    lora_e2e_dataset_free(c);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Checks one data set thoroughly; report prints its statistics. */
static void check_dataset(const lora_e2e_dataset *ds, int report) {
    lora_error err;
    size_t     n_mr = 0, cap = 0;
    for (int sp = 0; sp < 3; sp++)
        cap += (size_t)ds->split[sp].n_items;
    char **keys                             = calloc(cap, sizeof *keys);
    int    count_hist[LORA_E2E_N_SLOTS + 1] = {0}, bad_refs = 0, dup_refs = 0, total_refs = 0;
    int    heldout_in_train = 0, heldout_in_test = 0, refs_out_of_range = 0, no_name = 0;
    double slot_sum  = 0;
    int    n_skel[3] = {0};
    for (int sp = 0; sp < 3; sp++) {
        const lora_e2e_split *s     = &ds->split[sp];
        char                **skels = calloc((size_t)s->n_refs + 1, sizeof *skels);
        int                   nsk   = 0;
        for (int32_t i = 0; i < s->n_items; i++) {
            const lora_e2e_item *it = &s->items[i];
            char                 mr[LORA_E2E_MR_MAX];
            lora_e2e_mr_format(&it->mr, mr, sizeof mr, &err);
            keys[n_mr++] = strdup(mr);
            int k        = lora_e2e_mr_n_slots(&it->mr);
            count_hist[k]++;
            slot_sum += k;
            int name = it->mr.value[LORA_E2E_NAME];
            no_name += name < 0;
            int held = name >= 0 && it->mr.value[LORA_E2E_FOOD] == ds->heldout_food[name];
            if (sp == LORA_E2E_TEST) {
                heldout_in_test += held;
                if (it->n_refs < 5 || it->n_refs > 10) refs_out_of_range++;
            } else {
                heldout_in_train += held;
            }
            for (int32_t j = 0; j < it->n_refs; j++) {
                lora_e2e_slot_check chk;
                lora_e2e_slot_check_text(&it->mr, it->refs[j], &chk, &err);
                total_refs++;
                if (chk.n_missing || chk.n_wrong || chk.n_added) {
                    if (bad_refs < 5)
                        fprintf(stderr, "slot check: %d missing %d wrong %d added\n  %s\n  %s\n",
                                chk.n_missing, chk.n_wrong, chk.n_added, mr, it->refs[j]);
                    bad_refs++;
                }
                for (int32_t q = 0; q < j; q++)
                    dup_refs += !strcmp(it->refs[q], it->refs[j]);
                char skel[2 * LORA_E2E_REF_MAX];
                if (lora_e2e_delexicalise(it->refs[j], skel, sizeof skel, &err) == LORA_OK)
                    skels[nsk++] = strdup(skel);
            }
        }
        qsort(skels, (size_t)nsk, sizeof *skels, cmp_str);
        for (int i = 0; i < nsk; i++)
            n_skel[sp] += i == 0 || strcmp(skels[i], skels[i - 1]);
        for (int i = 0; i < nsk; i++)
            free(skels[i]);
        free(skels);
    }
    test_condf(no_name == 0, "%d MRs without a name", no_name);
    test_condf(bad_refs == 0, "%d of %d references fail the slot check", bad_refs, total_refs);
    test_condf(dup_refs == 0, "%d duplicate references within an MR", dup_refs);
    test_condf(heldout_in_train == 0, "%d train/dev MRs use a held-out name x food pair",
               heldout_in_train);
    test_condf(heldout_in_test * 5 >= ds->split[LORA_E2E_TEST].n_items * 2,
               "only %d test MRs use a held-out pair", heldout_in_test);
    test_condf(refs_out_of_range == 0, "%d test MRs outside 5..10 references", refs_out_of_range);

    /* no MR twice, within or across splits */
    qsort(keys, n_mr, sizeof *keys, cmp_str);
    int dups = 0;
    for (size_t i = 1; i < n_mr; i++)
        dups += !strcmp(keys[i], keys[i - 1]);
    test_condf(dups == 0, "%d MRs occur twice", dups);
    for (size_t i = 0; i < n_mr; i++)
        free(keys[i]);
    free(keys);

    /* slot counts: within 3..8, every count used, an E2E-like mean */
    int out_of_range = count_hist[0] + count_hist[1] + count_hist[2];
    test_condf(out_of_range == 0, "%d MRs with fewer than 3 slots", out_of_range);
    for (int k = 3; k <= 8; k++)
        test_condf(count_hist[k] > 0, "no MR with %d slots", k);
    double mean = slot_sum / (double)n_mr;
    test_condf(mean > 5.0 && mean < 6.5, "mean slot count %.2f", mean);

    /* variety: distinct sentence skeletons after replacing every slot value */
    test_condf(n_skel[LORA_E2E_TEST] >= 50, "test: %d distinct skeletons", n_skel[2]);
    test_condf(n_skel[LORA_E2E_TRAIN] >= 1000, "train: %d distinct skeletons", n_skel[0]);
    if (report) {
        printf("references %d; slot counts 3..8: %d %d %d %d %d %d (mean %.2f); distinct "
               "skeletons train %d / %d, test %d / %d\n",
               total_refs, count_hist[3], count_hist[4], count_hist[5], count_hist[6],
               count_hist[7], count_hist[8], mean, n_skel[0], ds->split[0].n_refs, n_skel[2],
               ds->split[2].n_refs);
    }
}

static void test_default_dataset(void) {
    lora_e2e_params   p  = lora_e2e_params_default();
    lora_e2e_dataset *ds = make(p.seed, p.n_train, p.n_dev, p.n_test);
    if (!ds) return;
    test_cond("default sizes", ds->split[0].n_refs == 3000 && ds->split[1].n_refs == 300 &&
                                   ds->split[2].n_items == 100);
    check_dataset(ds, 1);
    lora_e2e_dataset_free(ds);
    for (uint64_t seed = 2; seed <= 4; seed++) { /* more of the grammar */
        ds = make(seed, 2000, 100, 60);
        if (ds) check_dataset(ds, 0);
        lora_e2e_dataset_free(ds);
    }
}

static void test_realise(void) {
    lora_e2e_mr mr;
    lora_error  err;
    char        buf[LORA_E2E_REF_MAX];
    uint64_t    rng = 7;
    lora_e2e_mr_parse("eatType[pub], food[French]", &mr, &err);
    test_cond("no name", lora_e2e_realise(&mr, &rng, buf, sizeof buf, &err) == LORA_ERR_ARG);
    lora_e2e_mr_parse("name[Travellers Rest Beefeater], eatType[coffee shop], food[Fast food], "
                      "priceRange[more than £30], customer rating[5 out of 5], "
                      "area[city centre], familyFriendly[no], near[Express by Holiday Inn]",
                      &mr, &err);
    test_cond("small buffer", lora_e2e_realise(&mr, &rng, buf, 16, &err) == LORA_ERR_ARG);
    int ok = 1;
    for (int k = 0; k < 2000 && ok; k++) { /* the longest MR fits, every time */
        lora_e2e_slot_check chk;
        ok = lora_e2e_realise(&mr, &rng, buf, sizeof buf, &err) == LORA_OK &&
             lora_e2e_slot_check_text(&mr, buf, &chk, &err) == LORA_OK && chk.n_missing == 0 &&
             chk.n_wrong == 0 && chk.n_added == 0 && buf[0] >= 'A' && buf[0] <= 'Z' &&
             buf[strlen(buf) - 1] == '.' && !strstr(buf, "  ") && !strstr(buf, "{");
        if (!ok) fprintf(stderr, "bad: %s\n", buf);
    }
    test_cond("longest MR realised", ok);
    static const char *const small[] = {"name[Cotto]", "name[Cotto], near[The Rice Boat]",
                                        "name[The Rice Boat], area[riverside]"};
    for (size_t k = 0; k < sizeof small / sizeof small[0]; k++) {
        lora_e2e_mr_parse(small[k], &mr, &err);
        ok = 1;
        for (int t = 0; t < 200 && ok; t++) {
            lora_e2e_slot_check chk;
            ok = lora_e2e_realise(&mr, &rng, buf, sizeof buf, &err) == LORA_OK &&
                 lora_e2e_slot_check_text(&mr, buf, &chk, &err) == LORA_OK &&
                 chk.n_missing + chk.n_wrong + chk.n_added == 0 && !strstr(buf, " .");
        }
        test_condf(ok, "small MR %s: %s", small[k], buf);
    }
    char p[LORA_E2E_MR_MAX];
    lora_e2e_mr_parse("name[Zizzi], near[Café Rouge]", &mr, &err);
    lora_e2e_prompt(&mr, p, sizeof p, &err);
    test_condf(!strcmp(p, "name[Zizzi], near[Café Rouge] ||"), "prompt: %s", p);

    lora_e2e_params   bad = lora_e2e_params_default();
    lora_e2e_dataset *ds  = NULL;
    bad.n_train           = -1;
    test_cond("bad size", lora_e2e_generate(&bad, &ds, &err) == LORA_ERR_ARG && !ds);
    bad               = lora_e2e_params_default();
    bad.test_refs_min = 0;
    test_cond("bad refs", lora_e2e_generate(&bad, &ds, &err) == LORA_ERR_ARG && !ds);
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) n = 0;
    if (s) s[n] = '\0';
    fclose(f);
    return s;
}

static void test_files(void) {
    const char *tmp = getenv("LORA_TEST_TMP");
    char        top[400], dir[512], path[600];
    snprintf(top, sizeof top, "%s/test_e2e.%ld", tmp ? tmp : "/tmp", (long)getpid());
    snprintf(dir, sizeof dir, "%s/data", top);
    lora_e2e_dataset *ds = make(5, 200, 50, 30);
    if (!ds) return;
    lora_error err;
    test_condf(lora_e2e_write(ds, dir, &err) == LORA_OK, "write: %s", err.msg);

    /* train.jsonl: one pair per line, prompt "<MR> ||", completion " <sentence>" */
    snprintf(path, sizeof path, "%s/train.jsonl", dir);
    char *text = slurp(path);
    test_cond("train.jsonl read", text != NULL);
    int lines = 0, good = 0, pound = 0;
    for (char *line = text, *nl; text && line && *line; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl) *nl = '\0';
        lines++;
        cJSON *o = cJSON_Parse(line);
        cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "prompt");
        cJSON *c = cJSON_GetObjectItemCaseSensitive(o, "completion");
        if (cJSON_IsString(p) && cJSON_IsString(c)) {
            size_t      pl = strlen(p->valuestring);
            lora_e2e_mr mr;
            char        mrtext[LORA_E2E_MR_MAX];
            int         ok = pl > 3 && !strcmp(p->valuestring + pl - 3, " ||") &&
                     c->valuestring[0] == ' ' && c->valuestring[1] != ' ' && pl - 3 < sizeof mrtext;
            if (ok) {
                memcpy(mrtext, p->valuestring, pl - 3);
                mrtext[pl - 3] = '\0';
                ok             = lora_e2e_mr_parse(mrtext, &mr, &err) == LORA_OK;
            }
            good += ok;
        }
        pound += strstr(line, "£") != NULL;
        cJSON_Delete(o);
    }
    test_condf(lines == 200 && good == 200, "train.jsonl: %d lines, %d well-formed", lines, good);
    test_cond("UTF-8 passthrough",
              text && pound > 0 && !strstr(text, "\\u00a3") && !strstr(text, "\\u00e9"));
    free(text);

    /* test.jsonl: prompt, references, mr */
    snprintf(path, sizeof path, "%s/test.jsonl", dir);
    text  = slurp(path);
    lines = good = 0;
    for (char *line = text, *nl; text && line && *line; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl) *nl = '\0';
        cJSON               *o  = cJSON_Parse(line);
        cJSON               *r  = cJSON_GetObjectItemCaseSensitive(o, "references");
        cJSON               *m  = cJSON_GetObjectItemCaseSensitive(o, "mr");
        const lora_e2e_item *it = lines < ds->split[2].n_items ? &ds->split[2].items[lines] : NULL;
        char                 mr[LORA_E2E_MR_MAX];
        if (it) lora_e2e_mr_format(&it->mr, mr, sizeof mr, &err);
        good += it && cJSON_IsArray(r) && cJSON_GetArraySize(r) == it->n_refs &&
                cJSON_IsString(m) && !strcmp(m->valuestring, mr) &&
                !strcmp(cJSON_GetArrayItem(r, 0)->valuestring, it->refs[0]);
        lines++;
        cJSON_Delete(o);
    }
    test_condf(lines == 30 && good == 30, "test.jsonl: %d lines, %d matching", lines, good);
    free(text);

    /* test.refs.txt groups and test.mr.txt lines line up with the test MRs */
    lora_eval_refs  refs;
    lora_eval_lines mrs;
    snprintf(path, sizeof path, "%s/test.refs.txt", dir);
    test_cond("refs read", lora_eval_read_refs(path, &refs, &err) == LORA_OK);
    test_condf(refs.n_groups == 30 && refs.lines.n == (size_t)ds->split[2].n_refs,
               "test.refs.txt: %zu groups", refs.n_groups);
    snprintf(path, sizeof path, "%s/test.mr.txt", dir);
    test_cond("mrs read", lora_eval_read_lines(path, &mrs, &err) == LORA_OK);
    test_cond("test.mr.txt", mrs.n == 30);
    lora_eval_refs_free(&refs);
    lora_eval_lines_free(&mrs);

    /* nothing left under a temporary name */
    char cmd[700];
    snprintf(cmd, sizeof cmd, "ls '%s' | grep -q tmp", dir);
    test_cond("no temporaries", system(cmd) != 0);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", top);
    if (system(cmd) != 0) test_cond("cleanup", 0);
    lora_e2e_dataset_free(ds);
}

int main(void) {
    test_determinism();
    test_default_dataset();
    test_realise();
    test_files();
    return test_report("test_e2e");
}
