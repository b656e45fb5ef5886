#!/usr/bin/env bash
# The secret scan: detect-secrets over every file git tracks, against the committed
# baseline `.secrets.baseline`. Fails, naming file, line and detector, when it finds
# a secret the baseline does not list; line numbers may move freely.
#
# Every entry of the baseline was looked at and is a test fixture or an example, not
# a credential (they are marked `is_secret: false`). After adding such a fixture,
# look at what the scan reports, then `bash scripts/secret-scan.sh --update` rewrites
# the baseline (the new entries marked reviewed) for the commit.
set -euo pipefail
cd "$(dirname "$0")/.."

detect_secrets=${AEGIS_DETECT_SECRETS:-target/ci-py/bin/detect-secrets}
if [ ! -x "$detect_secrets" ]; then
  bash scripts/ci-tools.sh
fi

# The lock files hold checksums (high-entropy hex) and the baseline holds hashes.
exclude='^((fuzz/)?Cargo\.lock|\.secrets\.baseline)$'
scan=target/secret-scan.json
mkdir -p target
# The tracked files, named one by one: left to itself detect-secrets walks the
# whole folder, target/ included. With some 4,000 files (fuzz/corpus/ holds most)
# xargs starts detect-secrets more than once; each prints its own JSON document,
# merged below.
raw=target/secret-scan.raw
git ls-files -z | xargs -0 "$detect_secrets" scan --exclude-files "$exclude" >"$raw"
python3 - "$raw" "$scan" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
decoder, at, merged = json.JSONDecoder(), 0, None
while True:
    while at < len(text) and text[at].isspace():
        at += 1
    if at >= len(text):
        break
    doc, at = decoder.raw_decode(text, at)
    if merged is None:
        merged = doc
    else:
        merged["results"].update(doc["results"])
if merged is None:
    sys.exit("secret scan: detect-secrets printed nothing")
with open(sys.argv[2], "w") as out:
    json.dump(merged, out)
PY

if [ "${1:-}" = "--update" ]; then
  python3 - "$scan" .secrets.baseline <<'PY'
import json, sys
scan = json.load(open(sys.argv[1]))
for findings in scan["results"].values():
    for finding in findings:
        finding["is_secret"] = False
with open(sys.argv[2], "w") as out:
    json.dump(scan, out, indent=2, sort_keys=True)
    out.write("\n")
PY
  echo "secret scan: .secrets.baseline rewritten; review it before committing"
  exit 0
fi

python3 - "$scan" .secrets.baseline <<'PY'
import json, sys
scan = json.load(open(sys.argv[1]))
baseline = json.load(open(sys.argv[2]))
def keys(doc):
    return {(name, f["type"], f["hashed_secret"])
            for name, findings in doc["results"].items() for f in findings}
known = keys(baseline)
new = [(name, f) for name, findings in scan["results"].items() for f in findings
       if (name, f["type"], f["hashed_secret"]) not in known]
files = len(scan["results"])
if new:
    for name, f in new:
        print(f"secret scan: {name}:{f['line_number']}: {f['type']} not in .secrets.baseline",
              file=sys.stderr)
    print(f"secret scan: {len(new)} new potential secret(s); remove them, or if they are "
          "fixtures run `bash scripts/secret-scan.sh --update` and commit the baseline",
          file=sys.stderr)
    sys.exit(1)
total = sum(len(f) for f in scan["results"].values())
print(f"secret scan: no new secrets ({total} known fixture findings in {files} files)")
PY
