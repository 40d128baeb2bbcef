// hf_tokenizers_check.js — a tokenizer.json written by `lora tokenizer-train`, read by Hugging
// Face's own JS implementation (npm @huggingface/tokenizers), must give the ids `lora tokenize`
// gives.
//
//   node hf_tokenizers_check.js TOKENIZERS_CJS LORA_BINARY TOKENIZER_DIR TEXT_FILE...
//
// Each text file is compared whole, and so are 300 random strings joined by <|endoftext|>.
'use strict';
const fs = require('fs');
const { execFileSync } = require('child_process');

const [cjs, lora, tokDir, ...texts] = process.argv.slice(2);
if (!texts.length) {
    console.error('usage: node hf_tokenizers_check.js TOKENIZERS_CJS LORA_BINARY TOKENIZER_DIR TEXT...');
    process.exit(2);
}
const { Tokenizer } = require(cjs);
const hf = new Tokenizer(JSON.parse(fs.readFileSync(`${tokDir}/tokenizer.json`, 'utf8')), {});

function loraEncode(s) {
    const out = execFileSync(lora, ['tokenize', '--tokenizer', tokDir],
        { input: Buffer.from(s), maxBuffer: 1 << 28 }).toString().trim();
    return out === '' ? [] : out.split(' ').map(Number);
}

let passed = 0, failed = 0;
function compare(name, s) {
    const want = hf.encode(s, { add_special_tokens: false }).ids;
    const got = loraEncode(s);
    let i = 0;
    while (i < got.length && i < want.length && got[i] === want[i]) i++;
    if (i === got.length && i === want.length) {
        passed++;
        console.log(`ok   ${name}: ${got.length} ids`);
    } else {
        failed++;
        console.log(`FAIL ${name}: first difference at id ${i}: lora [${got.slice(i, i + 5)}] ` +
            `tokenizers.js [${want.slice(i, i + 5)}]`);
    }
}

for (const t of texts) compare(t, fs.readFileSync(t, 'utf8'));

let seed = 0x9E3779B9;
function rand(n) { // xorshift32
    seed ^= seed << 13; seed >>>= 0;
    seed ^= seed >>> 17;
    seed ^= seed << 5; seed >>>= 0;
    return seed % n;
}
const pool = ['the', ' the', ' quick', 'fox', 'é', ' café', '中文', '😀', ' ', '  ', '\n', '\t',
    "'s", "'ll", '12', '345', '!', '?!', '...', ',', '<', '|', '>', 'A', 'Z', '\u00a0', '\u3000'];
const docs = [];
for (let d = 0; d < 300; d++) {
    let s = '';
    for (let k = 1 + rand(40); k > 0; k--) s += pool[rand(pool.length)];
    docs.push(s);
}
compare('300 random strings', docs.join('<|endoftext|>'));

console.log(`hf tokenizer.json: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
