// seqship_predict: run a bundle's TorchScript model (model.pt) from C++ with libtorch.
//
// usage: seqship_predict MODEL.pt INPUT.txt [PAD_ID]       (MODEL.pt: a bundle's model.pt, or the bundle folder)
//   INPUT.txt: one text per line, as its token ids (from tokenizer.json), separated by spaces.
//   Output: one line per input line: the logits, space-separated, full float precision.
// Rows are right-padded with PAD_ID (default 0) into one [batch, seq] batch with a lengths vector:
// the model contract of the bundle (see docs/bundle.md, "The model contract").
// A line that is not a list of token ids the model can read (a field that is not a decimal integer, an
// id outside the embedding, the pad id as a token) is an error naming the line and field, exit 1, and
// nothing is printed: a part of a line is never scored as if it were the whole text.
// Before libtorch reads model.pt, the bundle is checked (bundle_check.h): the manifest.json beside it (its
// sha256, the bundle digest, must equal SEQSHIP_EXPECT_SHA256 when that is set) must list model.pt with
// this size and sha256, and the model is loaded from the very bytes that were hashed.
#include <torch/script.h>

#include "bundle_check.h"
#include "lines.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

// The whole of `text` as a decimal int64, or nothing (a minus sign allowed; no '+', no spaces, nothing after).
static std::optional<int64_t> parse_id(const std::string& text) {
  if (text.empty() || !(text[0] == '-' || (text[0] >= '0' && text[0] <= '9'))) return std::nullopt;  // strtoll skips spaces, takes '+'
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (errno == ERANGE || end != text.c_str() + text.size()) return std::nullopt;
  return static_cast<int64_t>(v);
}

int main(int argc, char** argv) {
  if (argc < 3 || argc > 4) {
    std::cerr << "usage: seqship_predict MODEL.pt INPUT.txt [PAD_ID]\n";
    return 2;
  }
  int64_t pad_id = 0;
  if (argc > 3) {
    const auto parsed = parse_id(argv[3]);
    if (!parsed || *parsed < 0) {
      std::cerr << "usage: PAD_ID must be a non-negative integer (tokenizer.json's pad_id), got '" << argv[3] << "'\n";
      return 2;
    }
    pad_id = *parsed;
  }
  const char* pin = std::getenv("SEQSHIP_EXPECT_SHA256");
  if (pin && !*pin) {
    std::cerr << "usage: SEQSHIP_EXPECT_SHA256 is set but empty: unset it, or set it to the bundle digest you trust\n";
    return 2;
  }
  // Read a whole file (at most max_bytes + 1 of it); a folder is refused (a stream on one throws). Bundle
  // files must be regular files; the ids may come from a pipe (/dev/stdin, <(...)).
  auto slurp = [](const std::filesystem::path& path, std::string& out, bool regular_only, size_t max_bytes) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) return false;
    if (regular_only && !std::filesystem::is_regular_file(path, ec)) return false;
    std::ifstream f(path, std::ios::binary);
    if (!f) return false;
    out.clear();
    char block[1 << 16];
    while (out.size() <= max_bytes && f.read(block, sizeof block).gcount() > 0) out.append(block, static_cast<size_t>(f.gcount()));
    return !f.bad();
  };
  std::filesystem::path model_path(argv[1]);
  std::error_code ec;
  if (std::filesystem::is_directory(model_path, ec)) model_path /= "model.pt";  // the bundle folder itself
  if (model_path.filename() != "model.pt") {  // model.onnx, or any other file: not what this tool runs
    const auto ext = model_path.extension().string();
    const bool onnx = ext == ".onnx" || ext == ".ONNX";
    std::cerr << "usage: " << model_path.string() << (onnx ? " is an ONNX model; " : " is not a bundle's model.pt; ")
              << "seqship_predict runs the bundle's TorchScript model, model.pt (libtorch): give "
              << (model_path.parent_path().empty() ? std::filesystem::path("model.pt") : model_path.parent_path() / "model.pt").string()
              << " or the bundle folder" << (onnx ? " (model.onnx runs in onnxruntime: `pipeline predict`, or the Node predictor)" : "")
              << "\n";
    return 2;
  }
  const auto folder = model_path.parent_path().empty() ? std::filesystem::path(".") : model_path.parent_path();
  const auto manifest_path = folder / "manifest.json";
  // As Python and Node refuse them: a bundle file that is a link leading out of the bundle folder
  const auto home = std::filesystem::canonical(folder, ec);
  for (const auto& p : {model_path, manifest_path}) {
    std::error_code e2;
    const auto real = std::filesystem::canonical(p, e2);
    const auto rel = real.lexically_relative(home);
    if (!e2 && !ec && (rel.empty() || *rel.begin() == "..")) {
      std::cerr << "error: " << p.string() << " leads outside the bundle folder (" << real.string() << "); refusing to load it\n";
      return 1;
    }
  }
  std::string model_bytes, manifest_bytes;
  if (!slurp(manifest_path, manifest_bytes, true, seqship::MAX_MANIFEST)) {
    std::cerr << "error: " << manifest_path.string() << ": "
              << (std::filesystem::exists(manifest_path, ec) ? "not a readable regular file" : "missing")
              << "; give the model.pt of a whole seqship bundle folder\n";
    return 1;
  }
  try {
    const auto entry = seqship::read_manifest(manifest_path.string(), manifest_bytes, pin ? pin : "");
    std::error_code e3;
    const bool regular = std::filesystem::is_regular_file(model_path, e3);
    const auto size = regular ? std::filesystem::file_size(model_path, e3) : 0;
    if (!regular || e3) {
      std::cerr << "error: cannot read " << model_path.string() << " (give a bundle's model.pt, or the bundle folder)\n";
      return 1;
    }
    seqship::check_model_size(model_path.string(), size, entry);  // before reading it: a wrong size is never read whole
    if (!slurp(model_path, model_bytes, true, static_cast<size_t>(entry.bytes))) {
      std::cerr << "error: cannot read " << model_path.string() << "\n";
      return 1;
    }
    seqship::check_model_bytes(model_path.string(), model_bytes, entry);
  } catch (const seqship::BundleError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  torch::jit::script::Module model;
  try {
    std::istringstream checked(model_bytes);  // the bytes that were hashed, not the file opened again
    model = torch::jit::load(checked);
  } catch (const c10::Error& e) {
    std::cerr << "error: cannot load " << argv[1] << ": " << e.what_without_backtrace() << "\n";
    return 1;
  }
  model.eval();
  int64_t vocab = -1;
  for (const auto& p : model.named_parameters()) {
    if (p.name == "embed.weight") vocab = p.value.size(0);
  }
  if (vocab < 1) {
    std::cerr << "error: " << argv[1] << ": no embed.weight parameter: not a seqship model.pt\n";
    return 1;
  }
  if (pad_id >= vocab) {
    std::cerr << "usage: PAD_ID " << pad_id << " is outside the model's " << vocab << " embedding rows\n";
    return 2;
  }
  std::string input;
  if (!slurp(argv[2], input, false, std::string().max_size() - 1)) {
    std::cerr << "error: cannot read " << argv[2] << " (a file of token ids, one text per line)\n";
    return 1;
  }
  // Lines end in \n, \r\n or \r alone (lines.h): a carriage return never joins two texts into one
  const std::vector<std::string> lines = seqship::split_lines(input);
  std::vector<std::vector<int64_t>> rows;
  size_t width = 0;
  for (size_t n = 1; n <= lines.size(); ++n) {
    const std::string& line = lines[n - 1];
    std::istringstream fields(line);
    std::vector<int64_t> ids;
    std::string field;
    while (fields >> field) {
      const auto id = parse_id(field);
      const auto where = [&] { return std::string(argv[2]) + ", line " + std::to_string(n) + ", field " + std::to_string(ids.size() + 1); };
      if (!id) {
        std::cerr << "error: " << where() << ": '" << field << "' is not a token id (a decimal integer); write each text as its ids from tokenizer.json\n";
        return 1;
      }
      if (*id < 0 || *id >= vocab) {
        std::cerr << "error: " << where() << ": token id " << *id << " is outside the model's " << vocab
                  << " embedding rows; encode the text with this bundle's tokenizer.json\n";
        return 1;
      }
      if (*id == pad_id) {
        std::cerr << "error: " << where() << ": token id " << *id << " is the pad id, which no text token maps to; "
                  << "write only a text's own ids (or give the right PAD_ID)\n";
        return 1;
      }
      ids.push_back(*id);
    }
    if (ids.empty()) {
      std::cerr << "error: " << argv[2] << ", line " << n << ": no token ids (every text needs at least one)\n";
      return 1;
    }
    width = std::max(width, ids.size());
    rows.push_back(std::move(ids));
  }
  if (rows.empty()) {
    std::cerr << "error: " << argv[2] << ": no input lines\n";
    return 1;
  }
  const auto batch = static_cast<int64_t>(rows.size());
  auto token_ids = torch::full({batch, static_cast<int64_t>(width)}, pad_id, torch::kInt64);
  auto lengths = torch::empty({batch}, torch::kInt64);
  auto ids_acc = token_ids.accessor<int64_t, 2>();
  auto len_acc = lengths.accessor<int64_t, 1>();
  for (int64_t b = 0; b < batch; ++b) {
    const auto& r = rows[b];
    for (size_t t = 0; t < r.size(); ++t) ids_acc[b][t] = r[t];
    len_acc[b] = static_cast<int64_t>(r.size());
  }
  torch::InferenceMode guard;
  at::Tensor logits;
  try {
    logits = model.forward({token_ids, lengths}).toTensor().contiguous();
  } catch (const c10::Error& e) {
    std::cerr << "error: " << argv[1] << ": the model failed on this input: " << e.what_without_backtrace() << "\n";
    return 1;
  }
  const auto* data = logits.data_ptr<float>();
  const auto classes = logits.size(1);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t c = 0; c < classes; ++c) std::printf(c ? " %.9g" : "%.9g", data[b * classes + c]);
    std::printf("\n");
  }
  return 0;
}
