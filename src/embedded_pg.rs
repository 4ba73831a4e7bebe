//! A private PostgreSQL cluster run from the installed server binaries.
//!
//! Used by the service when no `DATABASE_URL` is given, and by the tests for
//! their throwaway cluster. The postmaster is a child process supervised by a
//! dedicated thread, with a parent-death signal so that it never outlives us.
//! When we run as root (CI does), `initdb` and `postgres` run as the
//! `postgres` user, since both refuse to run as root.

use std::{
    fs,
    io::{self, Write},
    net::{Ipv4Addr, TcpListener},
    os::unix::{
        fs::{OpenOptionsExt, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::{Pid, Uid, User, chown},
};

/// What kind of cluster to run.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Holds `pgdata/` (the cluster), `postgres.log` and the password file.
    pub root: PathBuf,
    /// Trade durability for speed (fsync off): only for throwaway clusters.
    pub throwaway: bool,
    /// Port on 127.0.0.1; `None` picks a free one.
    pub port: Option<u16>,
    /// Serve TLS with this certificate (for tests of TLS to PostgreSQL).
    pub tls: Option<ServerTls>,
}

/// A certificate the server presents, and whether it refuses connections
/// without TLS (`hostssl` only in `pg_hba.conf`).
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub required: bool,
}

/// A running cluster. Dropping it stops the postmaster (fast shutdown).
#[derive(Debug)]
pub struct Cluster {
    root: PathBuf,
    port: u16,
    password: Option<String>,
    /// The directory of the Unix-domain socket the cluster also listens on,
    /// when it has one (see [`socket_dir`]).
    socket_dir: Option<PathBuf>,
    pid: Pid,
    supervisor: Option<JoinHandle<()>>,
}

/// The longest path of a Unix-domain socket (`sun_path`, less its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The directory of the cluster's Unix-domain socket: `<root>/socket`,
/// private to the server's user (and root), where the service connects.
/// None when the cluster requires TLS (a socket carries none, and
/// `configure_tls` lets only `hostssl` in), or when the socket's path would
/// be too long or could not be written in `unix_socket_directories` (a
/// comma separates its entries): the service then connects over TCP.
fn socket_dir(root: &Path, port: u16, tls: bool, run_as: Option<&User>) -> Result<Option<PathBuf>> {
    let dir = root.join("socket");
    let text = dir.to_string_lossy();
    let socket_len = text.len() + format!("/.s.PGSQL.{port}").len();
    if tls || socket_len > MAX_SOCKET_PATH || text.contains([',', '\\', '\'', '"']) {
        return Ok(None);
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    if let Some(user) = run_as {
        chown(dir.as_path(), Some(user.uid), Some(user.gid))?;
    }
    Ok(Some(dir))
}

/// `bytes` percent-encoded but for URL-safe characters, as a URL's host
/// (tokio-postgres, like libpq, reads a host that decodes to a path as the
/// directory of a Unix-domain socket).
fn percent_encode(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The superuser that `initdb` creates.
const SUPERUSER: &str = "postgres";
/// How long `postgres` may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

impl Cluster {
    /// Creates the cluster under `options.root` if it does not exist yet, then
    /// starts it and waits until it accepts connections. Blocking.
    pub fn start(options: &ClusterOptions) -> Result<Cluster> {
        let bin = find_bin_dir()?;
        let run_as = postgres_user_if_root()?;
        fs::create_dir_all(&options.root)
            .with_context(|| format!("creating {}", options.root.display()))?;
        let root = options.root.canonicalize()?;
        let pgdata = root.join("pgdata");
        let password_file = root.join("superuser-password");

        if !pgdata.join("PG_VERSION").exists() {
            let password = (!options.throwaway).then(random_password);
            init(&bin, &pgdata, password.as_deref(), run_as.as_ref())?;
            if let Some(password) = &password {
                write_private(&password_file, password)?;
            }
        }
        let password = if options.throwaway {
            None
        } else {
            Some(
                fs::read_to_string(&password_file)
                    .with_context(|| format!("reading {}", password_file.display()))?
                    .trim()
                    .to_owned(),
            )
        };

        let port = match options.port {
            Some(port) => port,
            None => free_port()?,
        };
        let log = open_log(&root.join("postgres.log"), run_as.as_ref())?;
        let tls_settings = match &options.tls {
            Some(tls) => configure_tls(&pgdata, tls, options.throwaway, run_as.as_ref())?,
            None => Vec::new(),
        };

        let socket_dir = socket_dir(&root, port, options.tls.is_some(), run_as.as_ref())?;
        let sockets = match &socket_dir {
            Some(dir) => format!("unix_socket_directories={}", dir.display()),
            None => "unix_socket_directories=".to_owned(),
        };
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(&pgdata)
            .args(["-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", &sockets])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if options.throwaway {
            for setting in [
                "fsync=off",
                "synchronous_commit=off",
                "full_page_writes=off",
                "max_connections=300",
            ] {
                cmd.args(["-c", setting]);
            }
        }
        for setting in &tls_settings {
            cmd.args(["-c", setting]);
        }
        let (pid, supervisor) = spawn_supervised(cmd, run_as.as_ref())?;
        let cluster = Cluster {
            root,
            port,
            password,
            socket_dir,
            pid,
            supervisor: Some(supervisor),
        };
        cluster.wait_ready()?;
        Ok(cluster)
    }

    /// A connection URL of the service's login role, with the password kept
    /// in `<root>/service-password` (made on first use). The role must be
    /// given LOGIN with that password (see `storage::enable_service_login`).
    pub fn service_url(&self, role: &str, dbname: &str) -> Result<(String, String)> {
        let path = self.root.join("service-password");
        let password = match fs::read_to_string(&path) {
            Ok(password) => password.trim().to_owned(),
            Err(_) => {
                let password = random_password();
                write_private(&path, &password)?;
                password
            }
        };
        // Through the socket when there is one: on the same machine, it
        // costs both sides much less per message than TCP over loopback.
        let host = match &self.socket_dir {
            Some(dir) => percent_encode(dir.as_os_str().as_encoded_bytes()),
            None => "127.0.0.1".to_owned(),
        };
        let url = format!("postgres://{role}:{password}@{host}:{}/{dbname}", self.port);
        Ok((url, password))
    }

    /// A connection URL for database `dbname`, as the superuser.
    pub fn url(&self, dbname: &str) -> String {
        match &self.password {
            Some(password) => format!(
                "postgres://{SUPERUSER}:{password}@127.0.0.1:{}/{dbname}",
                self.port
            ),
            None => format!("postgres://{SUPERUSER}@127.0.0.1:{}/{dbname}", self.port),
        }
    }

    /// The directory the cluster lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The postmaster's process id.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw().unsigned_abs()
    }

    /// Stops the postmaster (fast shutdown: open sessions are ended, data is
    /// flushed) and waits for it to exit.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(supervisor) = self.supervisor.take() {
            let _ = kill(self.pid, Signal::SIGINT);
            let _ = supervisor.join();
        }
    }

    /// Waits for the postmaster to report "ready" in `postmaster.pid` (it
    /// writes its status on the 8th line), then for the port to accept.
    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let pid_file = self.root.join("pgdata/postmaster.pid");
        loop {
            if self.supervisor.as_ref().is_none_or(|s| s.is_finished()) {
                bail!(
                    "postgres exited during start-up; see {}",
                    self.root.join("postgres.log").display()
                );
            }
            let ready = fs::read_to_string(&pid_file)
                .map(|s| s.lines().nth(7).is_some_and(|l| l.trim() == "ready"))
                .unwrap_or(false);
            if ready && std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "postgres did not become ready within {START_TIMEOUT:?}; see {}",
                    self.root.join("postgres.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Runs `cmd` from a thread that lives exactly as long as the child, so that
/// the child's parent-death signal fires only when this process dies (the
/// signal follows the thread that forked, not the process).
fn spawn_supervised(mut cmd: Command, run_as: Option<&User>) -> Result<(Pid, JoinHandle<()>)> {
    if let Some(user) = run_as {
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    // SAFETY: prctl is async-signal-safe; nothing here allocates.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGINT).map_err(io::Error::from)?;
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    let supervisor = std::thread::Builder::new()
        .name("postgres-supervisor".into())
        .spawn(move || match cmd.spawn() {
            Ok(mut child) => {
                let _ = tx.send(Ok(child.id()));
                let _ = child.wait();
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        })?;
    let pid = rx
        .recv()
        .map_err(|_| anyhow!("postgres supervisor thread died"))?
        .context("starting postgres")?;
    Ok((Pid::from_raw(pid as i32), supervisor))
}

fn init(bin: &Path, pgdata: &Path, password: Option<&str>, run_as: Option<&User>) -> Result<()> {
    fs::create_dir_all(pgdata)?;
    fs::set_permissions(pgdata, fs::Permissions::from_mode(0o700))?;
    let root = pgdata.parent().unwrap_or(pgdata);
    if let Some(user) = run_as {
        chown(pgdata, Some(user.uid), Some(user.gid))?;
        check_traversable(root, user)?;
    }
    let mut cmd = Command::new(bin.join("initdb"));
    cmd.arg("-D")
        .arg(pgdata)
        .args(["-U", SUPERUSER, "--encoding=UTF8", "--locale=C.UTF-8"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(user) = run_as {
        cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    // initdb reads the password from a file that it (maybe another user) can
    // read; it lives beside the data directory just for the call.
    let pwfile = root.join(".initdb-pwfile");
    match password {
        Some(password) => {
            write_private(&pwfile, password)?;
            if let Some(user) = run_as {
                chown(&pwfile, Some(user.uid), Some(user.gid))?;
            }
            cmd.args(["--auth-host=scram-sha-256", "--auth-local=scram-sha-256"])
                .arg("--pwfile")
                .arg(&pwfile);
        }
        None => {
            cmd.arg("--auth=trust");
        }
    }
    let output = cmd.output().context("running initdb");
    let _ = fs::remove_file(&pwfile);
    let output = output?;
    if !output.status.success() {
        bail!(
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Finds the directory holding `initdb` and `postgres`: `PG_BIN_DIR`, then
/// `PATH`, then the newest `/usr/lib/postgresql/<version>/bin`.
pub fn find_bin_dir() -> Result<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        let dir = PathBuf::from(dir);
        if has_both(&dir) {
            return Ok(dir);
        }
        bail!("PG_BIN_DIR={} holds no initdb and postgres", dir.display());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_both(&dir) {
                return Ok(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| has_both(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or_else(|| {
        anyhow!(
            "PostgreSQL server binaries (initdb, postgres) not found: install them \
             (Debian: apt-get install postgresql), set PG_BIN_DIR, or set DATABASE_URL"
        )
    })
}

/// As root, the user to run PostgreSQL as; otherwise `None` (run as ourselves).
fn postgres_user_if_root() -> Result<Option<User>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    User::from_name(SUPERUSER)?.map(Some).ok_or_else(|| {
        anyhow!(
            "running as root, PostgreSQL must run as the 'postgres' user, which does not exist: \
             install PostgreSQL's server package or run as another user"
        )
    })
}

/// As root, `postgres` must be able to reach its data directory.
fn check_traversable(dir: &Path, user: &User) -> Result<()> {
    for ancestor in dir.ancestors() {
        let meta = fs::metadata(ancestor)?;
        let mode = meta.permissions().mode();
        use std::os::unix::fs::MetadataExt;
        let ok = mode & 0o001 != 0
            || (meta.uid() == user.uid.as_raw() && mode & 0o100 != 0)
            || (meta.gid() == user.gid.as_raw() && mode & 0o010 != 0);
        if !ok {
            bail!(
                "the postgres user cannot enter {} (mode {:o}); choose a data directory \
                 it can reach (--data-dir)",
                ancestor.display(),
                mode & 0o777
            );
        }
    }
    Ok(())
}

/// Writes a secret to a new file that only its owner can read, from the
/// moment it exists. An existing file is replaced, and a symlink in its place
/// is refused (never followed).
fn write_private(path: &Path, contents: &str) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            bail!(
                "{} is a symbolic link; refusing to follow it",
                path.display()
            )
        }
        Ok(_) => fs::remove_file(path)?,
        Err(_) => {}
    }
    let mut file = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

/// Puts the certificate and key in the data directory and, when TLS is
/// required, allows only `hostssl` connections; returns the settings that
/// turn TLS on.
fn configure_tls(
    pgdata: &Path,
    tls: &ServerTls,
    throwaway: bool,
    run_as: Option<&User>,
) -> Result<Vec<String>> {
    let cert = pgdata.join("server.crt");
    let key = pgdata.join("server.key");
    write_private(&cert, &tls.cert_pem)?;
    write_private(&key, &tls.key_pem)?;
    if tls.required {
        let method = if throwaway { "trust" } else { "scram-sha-256" };
        write_private(
            &pgdata.join("pg_hba.conf"),
            &format!("hostssl all all 127.0.0.1/32 {method}\n"),
        )?;
    }
    if let Some(user) = run_as {
        for file in [&cert, &key, &pgdata.join("pg_hba.conf")] {
            chown(file.as_path(), Some(user.uid), Some(user.gid))?;
        }
    }
    Ok(vec![
        "ssl=on".into(),
        format!("ssl_cert_file={}", cert.display()),
        format!("ssl_key_file={}", key.display()),
    ])
}

/// Opens the server's log for appending without following a symlink, and
/// gives it to `run_as` through the open file (no path to race on).
fn open_log(path: &Path, run_as: Option<&User>) -> Result<fs::File> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| {
            format!(
                "opening {} (a symbolic link there is refused)",
                path.display()
            )
        })?;
    if let Some(user) = run_as {
        nix::unistd::fchown(&log, Some(user.uid), Some(user.gid))?;
    }
    Ok(log)
}

fn random_password() -> String {
    use rand::{Rng, distr::Alphanumeric};
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Whether a process with this id is alive (used to clean up directories of
/// dead test runs).
pub fn process_alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|pid| kill(Pid::from_raw(pid), None).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("customers-pg-unit-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn secrets_are_private_from_the_start_and_symlinks_refused() {
        let dir = scratch();
        let secret = dir.join("secret");
        write_private(&secret, "one").unwrap();
        write_private(&secret, "two").unwrap();
        assert_eq!(fs::read_to_string(&secret).unwrap(), "two");
        let mode = fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let target = dir.join("target");
        fs::write(&target, "untouched").unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(write_private(&link, "x").is_err());
        assert!(open_log(&link, None).is_err());
        assert_eq!(fs::read_to_string(&target).unwrap(), "untouched");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_server_log_is_opened_for_appending() {
        let dir = scratch();
        let path = dir.join("postgres.log");
        fs::write(&path, "old\n").unwrap();
        let mut log = open_log(&path, None).unwrap();
        log.write_all(b"new\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "old\nnew\n");
        fs::remove_dir_all(dir).unwrap();
    }
}
