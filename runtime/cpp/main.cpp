// seqship_predict: run a bundle's TorchScript model (model.pt) from C++ with libtorch.
//
// usage: seqship_predict MODEL.pt INPUT.txt [PAD_ID]
//   INPUT.txt: one text per line, as its token ids (from tokenizer.json), separated by spaces.
//   Output: one line per input line: the logits, space-separated, full float precision.
// Rows are right-padded with PAD_ID (default 0) into one [batch, seq] batch with a lengths vector:
// the model contract of the bundle (see the README, "The bundle format").
#include <torch/script.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: seqship_predict MODEL.pt INPUT.txt [PAD_ID]\n";
    return 2;
  }
  const int64_t pad_id = argc > 3 ? std::stoll(argv[3]) : 0;
  std::ifstream in(argv[2]);
  if (!in) {
    std::cerr << "error: cannot read " << argv[2] << "\n";
    return 1;
  }
  std::vector<std::vector<int64_t>> rows;
  std::string line;
  size_t width = 0;
  for (size_t n = 1; std::getline(in, line); ++n) {
    std::istringstream fields(line);
    std::vector<int64_t> ids;
    int64_t id;
    while (fields >> id) ids.push_back(id);
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
  torch::jit::script::Module model;
  try {
    model = torch::jit::load(argv[1]);
  } catch (const c10::Error& e) {
    std::cerr << "error: cannot load " << argv[1] << ": " << e.what_without_backtrace() << "\n";
    return 1;
  }
  model.eval();
  const auto batch = static_cast<int64_t>(rows.size());
  auto token_ids = torch::full({batch, static_cast<int64_t>(width)}, pad_id, torch::kInt64);
  auto lengths = torch::empty({batch}, torch::kInt64);
  for (int64_t b = 0; b < batch; ++b) {
    const auto& r = rows[b];
    for (size_t t = 0; t < r.size(); ++t) token_ids[b][t] = r[t];
    lengths[b] = static_cast<int64_t>(r.size());
  }
  torch::InferenceMode guard;
  const auto logits = model.forward({token_ids, lengths}).toTensor().contiguous();
  const auto* data = logits.data_ptr<float>();
  const auto classes = logits.size(1);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t c = 0; c < classes; ++c) std::printf(c ? " %.9g" : "%.9g", data[b * classes + c]);
    std::printf("\n");
  }
  return 0;
}
