// The bundle checks of seqship_predict, before libtorch sees a byte of model.pt: the manifest beside it
// (its sha256 is the bundle digest, compared with SEQSHIP_EXPECT_SHA256 when set), the manifest's format,
// and model.pt's size and sha256 as the manifest lists them. The Python and Node predictors apply the
// same checks to the files they run (see docs/portable.md, "The trust model, in every consumer").
// Standard library only: a SHA-256 (FIPS 180-4) and a small JSON reader (RFC 8259) that reads a manifest as
// the Python and Node runtimes' parsers do: a duplicate key keeps the last value, a lone \u surrogate is
// accepted (here as U+FFFD; no field this tool reads can hold one). The limits of every bundle JSON reader
// (runtime/bundle.py, runtime/js/src/json.js, this one): arrays and objects nested at most 512 deep, integers
// within +-(2^53 - 1) (what JavaScript reads exactly), no number that overflows a double.
#pragma once

#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace seqship {

constexpr int MAX_JSON_DEPTH = 512;
constexpr long long MAX_JSON_INTEGER = 9007199254740991LL;  // 2^53 - 1

struct BundleError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline std::string sha256_hex(const std::string& data) {
  static const uint32_t k[64] = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01,
      0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc,
      0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
      0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
      0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08,
      0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
      0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  auto rotr = [](uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
  std::string msg = data;
  const uint64_t bits = static_cast<uint64_t>(data.size()) * 8;
  msg.push_back(static_cast<char>(0x80));
  while (msg.size() % 64 != 56) msg.push_back('\0');
  for (int i = 7; i >= 0; --i) msg.push_back(static_cast<char>((bits >> (8 * i)) & 0xff));
  for (size_t off = 0; off < msg.size(); off += 64) {
    uint32_t w[64];
    for (int i = 0; i < 16; ++i) {
      const auto* p = reinterpret_cast<const unsigned char*>(msg.data() + off + 4 * i);
      w[i] = (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
    }
    for (int i = 16; i < 64; ++i) {
      const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; ++i) {
      const uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  }
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (uint32_t v : h)
    for (int i = 28; i >= 0; i -= 4) out.push_back(hex[(v >> i) & 0xf]);
  return out;
}

// A parsed JSON value: kind, and the string (for strings: decoded; for numbers: as written) or children.
struct Json {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  std::string text;
  std::vector<Json> items;                  // Array
  std::map<std::string, Json> fields;       // Object
  const Json* get(const std::string& key) const {
    auto it = fields.find(key);
    return it == fields.end() ? nullptr : &it->second;
  }
};

class JsonReader {
 public:
  explicit JsonReader(const std::string& s) : s_(s) {}
  Json document() {
    Json v = value(0);
    space();
    if (i_ != s_.size()) fail("text after the JSON value");
    return v;
  }

 private:
  const std::string& s_;
  size_t i_ = 0;
  [[noreturn]] void fail(const std::string& why) { throw BundleError("not valid JSON (" + why + " at byte " + std::to_string(i_) + ")"); }
  void space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\r' || s_[i_] == '\t')) ++i_;
  }
  bool take(const char* word) {
    const size_t n = std::strlen(word);
    if (s_.compare(i_, n, word) != 0) return false;
    i_ += n;
    return true;
  }
  static void utf8(std::string& out, uint32_t c) {
    if (c < 0x80) out.push_back(char(c));
    else if (c < 0x800) { out.push_back(char(0xc0 | (c >> 6))); out.push_back(char(0x80 | (c & 0x3f))); }
    else if (c < 0x10000) { out.push_back(char(0xe0 | (c >> 12))); out.push_back(char(0x80 | ((c >> 6) & 0x3f))); out.push_back(char(0x80 | (c & 0x3f))); }
    else { out.push_back(char(0xf0 | (c >> 18))); out.push_back(char(0x80 | ((c >> 12) & 0x3f))); out.push_back(char(0x80 | ((c >> 6) & 0x3f))); out.push_back(char(0x80 | (c & 0x3f))); }
  }
  uint32_t hex4() {
    if (i_ + 4 > s_.size()) fail("a short \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s_[i_++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= c - '0';
      else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
      else fail("a bad \\u escape");
    }
    return v;
  }
  std::string string() {
    ++i_;  // the opening quote
    std::string out;
    while (true) {
      if (i_ >= s_.size()) fail("an unterminated string");
      const unsigned char c = s_[i_++];
      if (c == '"') return out;
      if (c < 0x20) fail("a control character in a string");
      if (c != '\\') { out.push_back(char(c)); continue; }
      if (i_ >= s_.size()) fail("an unterminated escape");
      const char e = s_[i_++];
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xd800 && cp < 0xdc00 && s_.compare(i_, 2, "\\u") == 0) {
            const size_t back = i_;
            i_ += 2;
            const uint32_t lo = hex4();
            if (lo >= 0xdc00 && lo < 0xe000) cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            else i_ = back;  // a lone high surrogate, then another escape
          }
          if (cp >= 0xd800 && cp < 0xe000) cp = 0xfffd;
          utf8(out, cp);
          break;
        }
        default: fail("a bad escape");
      }
    }
  }
  // depth: the arrays and objects that enclose this value
  Json value(int depth) {
    space();
    if (i_ >= s_.size()) fail("the end of the text");
    Json v;
    const char c = s_[i_];
    if ((c == '{' || c == '[') && depth >= MAX_JSON_DEPTH)
      fail("arrays and objects nested deeper than " + std::to_string(MAX_JSON_DEPTH));
    if (c == '{') {
      v.kind = Json::Object;
      ++i_;
      space();
      if (i_ < s_.size() && s_[i_] == '}') { ++i_; return v; }
      while (true) {
        space();
        if (i_ >= s_.size() || s_[i_] != '"') fail("an object key that is not a string");
        std::string key = string();
        space();
        if (i_ >= s_.size() || s_[i_] != ':') fail("a missing ':'");
        ++i_;
        v.fields[key] = value(depth + 1);  // a duplicate key: the last value, as Python's json and JSON.parse keep
        space();
        if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
        if (i_ < s_.size() && s_[i_] == '}') { ++i_; return v; }
        fail("a missing ',' or '}'");
      }
    }
    if (c == '[') {
      v.kind = Json::Array;
      ++i_;
      space();
      if (i_ < s_.size() && s_[i_] == ']') { ++i_; return v; }
      while (true) {
        v.items.push_back(value(depth + 1));
        space();
        if (i_ < s_.size() && s_[i_] == ',') { ++i_; continue; }
        if (i_ < s_.size() && s_[i_] == ']') { ++i_; return v; }
        fail("a missing ',' or ']'");
      }
    }
    if (c == '"') { v.kind = Json::String; v.text = string(); return v; }
    if (take("true")) { v.kind = Json::Bool; v.text = "true"; return v; }
    if (take("false")) { v.kind = Json::Bool; v.text = "false"; return v; }
    if (take("null")) return v;
    // -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?, as RFC 8259 spells a number
    const size_t start = i_;
    auto digit = [&] { return i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_])); };
    auto digits = [&] {
      if (!digit()) fail("a malformed number");
      while (digit()) ++i_;
    };
    if (i_ < s_.size() && s_[i_] == '-') ++i_;
    if (!digit()) fail("an unexpected character");
    const size_t int_start = i_;
    if (s_[i_] == '0') ++i_;
    else digits();
    const size_t int_digits = i_ - int_start;
    bool integer = true;
    if (i_ < s_.size() && s_[i_] == '.') { ++i_; digits(); integer = false; }
    if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
      ++i_;
      if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) ++i_;
      digits();
      integer = false;
    }
    v.kind = Json::Number;
    v.text = s_.substr(start, i_ - start);
    if (integer && (int_digits > 16 || std::stoll(s_.substr(int_start, int_digits)) > MAX_JSON_INTEGER)) {
      i_ = start;
      fail("the integer " + v.text.substr(0, 40) + " is outside +-" + std::to_string(MAX_JSON_INTEGER) +
           " (what JavaScript reads exactly)");
    }
    if (!integer && !std::isfinite(std::strtod(v.text.c_str(), nullptr))) {
      i_ = start;
      fail("a number too large for a double");
    }
    return v;
  }
};

// Whether `s` is well-formed UTF-8 (no overlong forms, no surrogates, nothing past U+10FFFF), as Python's
// bytes.decode("utf-8") and Node's fatal TextDecoder require of a manifest.
inline bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    int n;
    uint32_t cp;
    if (c < 0x80) { ++i; continue; }
    if (c >= 0xc2 && c <= 0xdf) { n = 1; cp = c & 0x1f; }
    else if (c >= 0xe0 && c <= 0xef) { n = 2; cp = c & 0x0f; }
    else if (c >= 0xf0 && c <= 0xf4) { n = 3; cp = c & 0x07; }
    else return false;
    for (int k = 1; k <= n; ++k) {
      if (i + k >= s.size()) return false;
      const unsigned char t = s[i + k];
      if ((t & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (t & 0x3f);
    }
    if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp < 0xe000)) return false;
    i += n + 1;
  }
  return true;
}

// A plain non-negative decimal integer of at most 18 digits (a file size), or -1.
inline long long plain_integer(const Json& v) {
  if (v.kind != Json::Number || v.text.empty() || v.text.size() > 18) return -1;
  for (char c : v.text)
    if (c < '0' || c > '9') return -1;
  return std::stoll(v.text);
}

// What the manifest says of model.pt.
struct ModelEntry {
  long long bytes;
  std::string sha256;
};

// Check `manifest_bytes` (at most MAX_MANIFEST of them were read) and return model.pt's entry; `pin`: the
// bundle digest the caller trusts, or empty. Throws BundleError naming the file and the fix.
constexpr size_t MAX_MANIFEST = 16u << 20;
inline ModelEntry read_manifest(const std::string& manifest_path, const std::string& manifest_bytes, std::string pin) {
  if (manifest_bytes.size() > MAX_MANIFEST)
    throw BundleError(manifest_path + ": larger than 16 MiB; not a seqship manifest");
  const std::string digest = sha256_hex(manifest_bytes);
  if (!pin.empty()) {
    for (auto& ch : pin) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (pin.size() != 64 || pin.find_first_not_of("0123456789abcdef") != std::string::npos)
      throw BundleError("SEQSHIP_EXPECT_SHA256 must be 64 hex digits (the bundle digest `pipeline inspect` prints)");
    if (pin != digest)
      throw BundleError(manifest_path + ": the bundle digest is " + digest + ", not the trusted " + pin + "; this is not the bundle you pinned");
  }
  if (!valid_utf8(manifest_bytes))
    throw BundleError(manifest_path + ": not valid JSON (not UTF-8); the bundle is damaged, re-run `pipeline run package`");
  Json m;
  try {
    m = JsonReader(manifest_bytes).document();
  } catch (const BundleError& e) {
    throw BundleError(manifest_path + ": " + e.what() + "; the bundle is damaged, re-run `pipeline run package`");
  }
  const Json* format = m.kind == Json::Object ? m.get("format") : nullptr;
  if (!format || format->kind != Json::String || format->text != "seqship.bundle")
    throw BundleError(manifest_path + ": not a seqship bundle manifest (no \"format\": \"seqship.bundle\")");
  const Json* version = m.get("format_version");
  if (!version || plain_integer(*version) != 2)
    throw BundleError(manifest_path + ": format_version " + (version ? version->text : "(missing)") + " is not supported by this tool (reads 2)");
  const Json* files = m.get("files");
  const Json* entry = files && files->kind == Json::Object ? files->get("model.pt") : nullptr;
  if (!entry || entry->kind != Json::Object)
    throw BundleError(manifest_path + ": 'files' does not list model.pt; export the bundle with seqship (it ships model.pt)");
  const Json* size = entry->get("bytes");
  const Json* sha = entry->get("sha256");
  if (!size || plain_integer(*size) < 0 || !sha || sha->kind != Json::String || sha->text.size() != 64)
    throw BundleError(manifest_path + ": the entry of model.pt needs \"bytes\" (an integer) and \"sha256\" (64 hex digits)");
  return {plain_integer(*size), sha->text};
}

// model.pt's size (checked before its bytes are read: a file of the wrong size is never read whole) and sha256.
inline void check_model_size(const std::string& model_path, unsigned long long actual, const ModelEntry& entry) {
  if (static_cast<long long>(actual) != entry.bytes)
    throw BundleError(model_path + ": " + std::to_string(actual) + " bytes, the manifest says " + std::to_string(entry.bytes) +
                      " (truncated or replaced)");
}

inline void check_model_bytes(const std::string& model_path, const std::string& model_bytes, const ModelEntry& entry) {
  check_model_size(model_path, model_bytes.size(), entry);  // the file may have changed since its size was read
  const std::string got = sha256_hex(model_bytes);
  if (got != entry.sha256)
    throw BundleError(model_path + ": sha256 " + got.substr(0, 12) + "... does not match the manifest's " + entry.sha256.substr(0, 12) +
                      "...; the file was altered after packaging, copy the bundle again");
}

}  // namespace seqship
