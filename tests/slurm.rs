//! Sweeps on a real Slurm: a single-node cluster (munged, slurmctld, slurmd from Debian's
//! packages, which scripts/setup.sh installs) started for the test on localhost from a
//! slurm.conf in a temporary directory, fed the job array `qlstm sweep --emit slurm` writes.
//! If the daemons cannot start here, the test says why and fails: it never skips.
//!
//! The cluster: one node with this machine's CPUs and 90 % of its memory, one partition,
//! proctrack/linuxproc, task/none, no accounting, state and logs under the temporary
//! directory, its own munge socket and free ports. The test kills only the daemons it started,
//! by pid, and checks they are gone.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{bin, data_set, root, scratch};

fn sh(cmd: &str) -> String {
    let o = Command::new("sh").args(["-c", cmd]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn alive(pid: u32) -> bool {
    // a zombie is gone for our purposes: its process has exited
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// The daemons of a one-node cluster, stopped (by pid) when dropped.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    daemons: Vec<(&'static str, Child)>,
}

impl Cluster {
    fn start() -> Cluster {
        for cmd in ["munged", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scancel", "setpriv"] {
            assert!(
                !sh(&format!("command -v {cmd}")).is_empty(),
                "the Slurm test needs `{cmd}` (Debian packages munge, slurmctld, slurmd, slurm-client, util-linux): run scripts/setup.sh"
            );
        }
        let uid = sh("id -u");
        assert_eq!(
            uid, "0",
            "the Slurm test runs munged as the munge user and slurmd as root, so it needs root (uid {uid})"
        );
        let dir = scratch("slurm");
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        // munge: its own key copy, socket and files, the directories as munged demands them
        let m = dir.join("munge");
        std::fs::create_dir_all(&m).unwrap();
        let key = m.join("munge.key");
        if Path::new("/etc/munge/munge.key").exists() {
            std::fs::copy("/etc/munge/munge.key", &key).unwrap();
        } else {
            let bytes: Vec<u8> = (0..1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
            std::fs::write(&key, bytes).unwrap();
        }
        let m_s = m.display().to_string();
        let status = Command::new("sh")
            .args(["-c", &format!("chown -R munge:munge {m_s} && chmod 711 {m_s} && chmod 400 {m_s}/munge.key")])
            .status()
            .unwrap();
        assert!(status.success(), "cannot hand {m_s} to the munge user");
        let socket = m.join("socket");
        let munged = Command::new("setpriv")
            .args(["--reuid=munge", "--regid=munge", "--init-groups", "munged", "--foreground"])
            .arg(format!("--key-file={}", key.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}/pid", m_s))
            .arg(format!("--log-file={}/log", m_s))
            .arg(format!("--seed-file={}/seed", m_s))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("munged.out")).unwrap())
            .spawn()
            .expect("start munged");
        let mut cluster = Cluster { conf: dir.join("slurm.conf"), dir: dir.clone(), daemons: vec![("munged", munged)] };
        cluster.wait("munged's socket", 20, || socket.exists(), &[dir.join("munged.out"), m.join("log")]);

        let host = sh("hostname -s");
        let mem_mb = sh("awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo");
        let d = dir.display();
        let conf = format!(
            "ClusterName=qlstmtest\nSlurmctldHost={host}(127.0.0.1)\nSlurmUser=root\nSlurmdUser=root\n\
             SlurmctldPort={}\nSlurmdPort={}\nAuthType=auth/munge\nAuthInfo=socket={}\nCredType=cred/munge\n\
             StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\nSlurmctldPidFile={d}/slurmctld.pid\n\
             SlurmdPidFile={d}/slurmd.pid\nSlurmctldLogFile={d}/slurmctld.log\nSlurmdLogFile={d}/slurmd.log\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nSelectType=select/cons_tres\n\
             SelectTypeParameters=CR_Core_Memory\nAccountingStorageType=accounting_storage/none\n\
             JobAcctGatherType=jobacct_gather/none\nJobCompType=jobcomp/none\nMpiDefault=none\nReturnToService=2\n\
             NodeName={host} NodeAddr=127.0.0.1 CPUs={} RealMemory={mem_mb} State=UNKNOWN\n\
             PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
            free_port(),
            free_port(),
            socket.display(),
            sh("nproc"),
        );
        std::fs::write(&cluster.conf, conf).unwrap();
        for sub in ["state", "spool"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        for (name, daemon) in [("slurmctld", "slurmctld"), ("slurmd", "slurmd")] {
            let child = Command::new(daemon)
                .args(["-D", "-f"])
                .arg(&cluster.conf)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join(format!("{name}.out"))).unwrap())
                .spawn()
                .unwrap_or_else(|e| panic!("start {daemon}: {e}"));
            cluster.daemons.push((name, child));
        }
        let logs =
            [dir.join("slurmctld.log"), dir.join("slurmd.log"), dir.join("slurmctld.out"), dir.join("slurmd.out")];
        let conf = cluster.conf.clone();
        cluster.wait("the node to be idle", 60, || cluster_idle(&conf), &logs);
        cluster
    }

    /// Wait for `ready`, up to `secs`; fail with the daemons' logs if it never comes (or a
    /// daemon died).
    fn wait(&mut self, what: &str, secs: u64, ready: impl Fn() -> bool, logs: &[PathBuf]) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            if ready() {
                return;
            }
            for (name, child) in &mut self.daemons {
                if let Some(status) = child.try_wait().unwrap() {
                    let logs: Vec<String> = logs.iter().map(|l| format!("--- {}:\n{}", l.display(), tail(l))).collect();
                    panic!("{name} exited ({status}) while waiting for {what}:\n{}", logs.join("\n"));
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let logs: Vec<String> = logs.iter().map(|l| format!("--- {}:\n{}", l.display(), tail(l))).collect();
        panic!("no {what} after {secs} s:\n{}", logs.join("\n"));
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// `sbatch --wait SCRIPT`: blocks until every array task has ended.
    fn sbatch_wait(&self, script: &Path) -> Output {
        self.cmd("sbatch").arg("--wait").arg(script).output().unwrap()
    }

    /// `sbatch SCRIPT`: the job id.
    fn sbatch(&self, script: &Path) -> String {
        let o = self.cmd("sbatch").arg("--parsable").arg(script).output().unwrap();
        assert!(o.status.success(), "sbatch: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().split(';').next().unwrap().to_string()
    }

    fn job_running(&self, id: &str) -> bool {
        let o = self.cmd("squeue").args(["-h", "-j", id, "-o", "%T"]).output().unwrap();
        !String::from_utf8_lossy(&o.stdout).trim().is_empty()
    }
}

fn cluster_idle(conf: &Path) -> bool {
    let o = Command::new("sinfo").args(["-h", "-o", "%T"]).env("SLURM_CONF", conf).output();
    o.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // the daemons this test started, and only those, newest first
        let pids: Vec<(&str, u32)> = self.daemons.iter().map(|(n, c)| (*n, c.id())).collect();
        for (_, child) in self.daemons.iter_mut().rev() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let t0 = Instant::now();
            while child.try_wait().ok().flatten().is_none() && t0.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let left: Vec<String> = pids.iter().filter(|(_, p)| alive(*p)).map(|(n, p)| format!("{n} ({p})")).collect();
        if !std::thread::panicking() {
            assert!(left.is_empty(), "daemons still running after the test: {left:?}");
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn rows(path: &Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let h: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    r.records()
        .map(|rec| {
            h.iter()
                .zip(rec.unwrap().iter())
                .filter(|(h, _)| !["tokens_per_s", "wall_s", "train_tokens_per_s"].contains(&h.as_str()))
                .map(|(_, v)| v.to_string())
                .collect()
        })
        .collect()
}

/// `qlstm sweep … --emit slurm` of the PTB-char recipe with extra `--set`s.
fn emit(out: &Path, grid: &str, sets: &[&str], extra: &[&str]) {
    let spec = root().join("configs/paper/ptb_char_fp_none.toml");
    let mut c = bin();
    c.args(["sweep", spec.to_str().unwrap(), "--grid", grid, "--set", &data_set()]);
    for s in sets {
        c.args(["--set", s]);
    }
    c.args(["--jobs", "2", "--threads", "1", "--out", out.to_str().unwrap(), "--emit", "slurm"]).args(extra);
    let o = c.output().unwrap();
    assert!(o.status.success(), "emit: {}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn sweeps_run_as_a_slurm_job_array_resume_after_preemption_and_report_their_status() {
    let t0 = Instant::now();
    let cluster = Cluster::start();
    eprintln!("cluster up in {:.1} s", t0.elapsed().as_secs_f64());
    let work = scratch("slurm-work");

    // 1. A three-run array, two at a time, submitted from another directory than the repo's.
    let out = work.join("sweep");
    emit(
        &out,
        "model.quantizer=fp,bc,tc",
        &["model.hidden=16", "train.max_steps=20"],
        &["--slurm-arg=--comment=qlstm-test"],
    );
    let script = out.join("sweep.sbatch");
    let text = std::fs::read_to_string(&script).unwrap();
    for line in [
        "#SBATCH --job-name=qlstm-sweep",
        "#SBATCH --array=0-2%2",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --mem=",
        "#SBATCH --time=0-00:12:00",
        &format!("#SBATCH --chdir={}", out.display()),
        &format!("#SBATCH --output={}/slurm/%a.out", out.display()),
        &format!("#SBATCH --error={}/slurm/%a.err", out.display()),
        "#SBATCH --signal=B:TERM@120",
        "#SBATCH --requeue",
        "#SBATCH --comment=qlstm-test",
    ] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }
    let o = cluster.sbatch_wait(&script);
    assert!(
        o.status.success(),
        "sbatch --wait: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    for q in ["fp", "bc", "tc"] {
        let run = qlstm::run_dir::RunDir::new(&out, &format!("ptb_char_fp_none_quantizer-{q}"));
        let s = run
            .read_summary()
            .unwrap()
            .unwrap_or_else(|| panic!("{q}: no summary; {}", tail(&out.join("slurm/0.err"))));
        assert_eq!((s.status.name(), s.steps), ("ok", 20), "{q}");
    }
    let o = bin().args(["table", out.to_str().unwrap(), "--layout", "table2"]).output().unwrap();
    assert!(o.status.success(), "table: {}", String::from_utf8_lossy(&o.stderr));
    let o = bin().args(["sweep", "--status", out.to_str().unwrap()]).output().unwrap();
    let status = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && status.contains("3 runs: 3 ok, 0 diverged"), "{status}");

    // 2. Preemption: the run checkpoints on SIGTERM (as at its time limit) and exits; the same
    // script submitted again resumes it, and it ends as an uninterrupted run does.
    let out = work.join("preempt");
    let sets = ["model.hidden=128", "train.max_steps=300", "train.checkpoint_every=20"];
    emit(&out, "model.quantizer=bc", &sets, &[]);
    let id = cluster.sbatch(&out.join("sweep.sbatch"));
    let run = qlstm::run_dir::RunDir::new(&out, "ptb_char_fp_none_quantizer-bc");
    let t1 = Instant::now();
    while run.checkpoint_step() < 40 && t1.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(run.checkpoint_step() >= 40, "the run got going: {}", tail(&out.join("slurm/0.err")));
    let o = cluster.cmd("scancel").args(["--batch", "--signal=TERM", &id]).output().unwrap();
    assert!(o.status.success(), "scancel: {}", String::from_utf8_lossy(&o.stderr));
    let t1 = Instant::now();
    while cluster.job_running(&id) && t1.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let s = run.read_summary().unwrap().expect("an interrupted run writes its summary");
    assert_eq!(s.status.name(), "interrupted", "{}", tail(&out.join("slurm/0.err")));
    assert!(s.steps < 300, "stopped early, at step {}", s.steps);
    let o = bin().args(["sweep", "--status", out.to_str().unwrap()]).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stdout).contains("interrupted"), "--status waits on it");
    let o = cluster.sbatch_wait(&out.join("sweep.sbatch"));
    assert!(o.status.success(), "resubmission: {}", String::from_utf8_lossy(&o.stderr));
    // the reference: the same run, never stopped, here
    let reference = work.join("reference");
    let spec = root().join("configs/paper/ptb_char_fp_none.toml");
    let mut c = bin();
    c.args(["run", spec.to_str().unwrap(), "--set", &data_set(), "--set", "model.quantizer=bc"]);
    c.args(["--set", "name=ptb_char_fp_none_quantizer-bc"]);
    for s in sets {
        c.args(["--set", s]);
    }
    let o = c.args(["--threads", "1", "--out", reference.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "reference: {}", String::from_utf8_lossy(&o.stderr));
    for f in ["metrics.csv", "summary.csv", "lambda.csv", "grad_norm.csv"] {
        let (a, b) = (run.file(f), reference.join("ptb_char_fp_none_quantizer-bc").join(f));
        assert_eq!(rows(&a), rows(&b), "{f}: preempted and resumed on Slurm vs uninterrupted");
    }
    drop(cluster);
    eprintln!("Slurm test: {:.1} s in all", t0.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&work);
}
