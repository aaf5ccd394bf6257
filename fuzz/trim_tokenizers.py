"""Writes the tokenizer.json seeds of fuzz/corpus/tokenizer/ into the current directory: the real
GPT-2 (ByteLevel) and Llama (Metaspace, byte_fallback) tokenizers of ../shared trimmed to a few
hundred entries, and variants in the other published styles (Llama-2 normalizer, Llama-3/Qwen2
Split regex, WordPiece-like affixes). Usage: python3 trim_tokenizers.py SHARED/models"""
import copy
import json
import sys

models = sys.argv[1]
def trim(path, keep_ids, keep_merges):
    """Keeps ids < keep_ids, the first keep_merges merges among them and a few added tokens."""
    t = json.load(open(path))
    m = t['model']
    vocab = {k: v for k, v in m['vocab'].items() if v < keep_ids}
    merges = []
    for a, b in m['merges']:
        if a in vocab and b in vocab and (a + b) in vocab:
            merges.append([a, b])
        if len(merges) >= keep_merges: break
    m['vocab'] = vocab; m['merges'] = merges
    t['added_tokens'] = [a for a in t['added_tokens'] if a['id'] < 3 or a['id'] in (13, 35, 68)]
    return t
def dump(t, name):
    open(name, 'w').write(json.dumps(t, ensure_ascii=False, separators=(',', ':')))
g = trim(models + '/docs-gpt2-10m/tokenizer.json', 700, 400)
dump(g, 'gpt2_bytelevel.json')
l = trim(models + '/docs-llama-12m/tokenizer.json', 900, 300)
dump(l, 'llama_metaspace.json')
# Llama-2 style: normalizer Prepend + Replace, no pre-tokenizer, legacy "a b" merges.
l2 = copy.deepcopy(l)
l2['normalizer'] = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                    {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
l2['pre_tokenizer'] = None
l2['model']['merges'] = [a + ' ' + b for a, b in l2['model']['merges'][:200]]
l2['model']['fuse_unk'] = True
l2['added_tokens'].append({"id": 700, "content": "<extra>", "single_word": True, "lstrip": True, "rstrip": True, "normalized": True, "special": False})
dump(l2, 'llama2_normalizer.json')
# Llama-3 / Qwen2 style: Split regex + ByteLevel without regex, Strip normalizer, ignore_merges.
g2 = copy.deepcopy(g)
g2['normalizer'] = {"type": "Strip", "strip_left": False, "strip_right": True}
g2['pre_tokenizer'] = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
     "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
g2['model']['ignore_merges'] = True
g2['model']['merges'] = g2['model']['merges'][:200]
g2['added_tokens'].append({"id": 701, "content": "<|im_start|>", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True})
dump(g2, 'llama3_split_regex.json')
# WordPiece-like BPE options: continuing_subword_prefix / end_of_word_suffix, Metaspace never, Split literal.
w = copy.deepcopy(l)
w['model']['byte_fallback'] = False
w['model']['continuing_subword_prefix'] = "##"
w['model']['end_of_word_suffix'] = "</w>"
w['model']['merges'] = w['model']['merges'][:100]
w['pre_tokenizer'] = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"String": "-"}, "behavior": "MergedWithNext", "invert": False},
    {"type": "Metaspace", "replacement": "\u2581", "add_prefix_space": False}]}
dump(w, 'bpe_suffixes.json')
# Hand-made WordPiece-style BPE: continuing_subword_prefix "##", end_of_word_suffix "</w>".
letters = "abcdefghijklmnopqrstuvwxyzHIW!,."
vocab = {"[UNK]": 0}
for c in letters:
    vocab[c] = len(vocab); vocab["##" + c] = len(vocab)
    vocab[c + "</w>"] = len(vocab); vocab["##" + c + "</w>"] = len(vocab)
merges = []
for a, b in [("h", "##e"), ("he", "##l"), ("hel", "##l"), ("w", "##o"), ("wo", "##r"), ("t", "##h"), ("th", "##e</w>"), ("q", "##u"), ("qu", "##i")]:
    vocab.setdefault(a + b[2:], len(vocab)); merges.append([a, b])
w = {"version": "1.0", "truncation": None, "padding": None,
     "added_tokens": [{"id": 0, "content": "[UNK]", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}],
     "normalizer": {"type": "Sequence", "normalizers": [{"type": "Strip", "strip_left": True, "strip_right": True},
                                                          {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}]},
     "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
         {"type": "Split", "pattern": {"String": " "}, "behavior": "Removed", "invert": False},
         {"type": "Split", "pattern": {"Regex": "[,.!]"}, "behavior": "Isolated", "invert": False}]},
     "post_processor": None, "decoder": None,
     "model": {"type": "BPE", "dropout": None, "unk_token": "[UNK]", "continuing_subword_prefix": "##",
               "end_of_word_suffix": "</w>", "fuse_unk": True, "byte_fallback": False, "ignore_merges": False,
               "vocab": vocab, "merges": merges}}
dump(w, 'bpe_suffixes.json')
