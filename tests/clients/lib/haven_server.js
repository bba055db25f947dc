// A real `haven server` for the npm real-client tests: a temporary data dir, ephemeral ports, the
// port a test needs read from the server's log line, and the child killed by PID on every exit
// path (SIGTERM, then SIGKILL; a process 'exit' hook as the last resort).
'use strict';

const {spawn} = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const LISTEN_DEADLINE_MS = 20_000;
const STOP_DEADLINE_MS = 5_000;
const MAX_STDERR_KEEP = 64 * 1024;

// The haven binary: $HAVEN_BINARY or argv[2].
function havenBinary() {
  const bin = process.env.HAVEN_BINARY || process.argv[2];
  if (!bin) throw new Error('set HAVEN_BINARY or pass the haven binary path as argv[2]');
  if (!fs.existsSync(bin)) throw new Error(`haven binary not found: ${bin}`);
  return bin;
}

class HavenServer {
  // `portRe`: a regular expression over one stderr line whose first group is the port to return
  // from start(); `log`: where to print progress.
  constructor({portRe, log, nodeName = 't'}) {
    this.portRe = portRe;
    this.log = log;
    this.nodeName = nodeName;
    this.child = null;
    this.stderr = '';
    this.dataDir = null;
    process.on('exit', () => this.killNow());
  }

  // Starts the server and resolves with the port `portRe` found.
  start(bin) {
    this.dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'haven-client-test-'));
    const args = [
      'server', '--data-dir', this.dataDir, '--http', '127.0.0.1:0', '--amqp', '127.0.0.1:0',
      '--node-name', this.nodeName, '--log-level', 'info'
    ];
    const child = spawn(bin, args, {stdio: ['ignore', 'ignore', 'pipe']});
    this.child = child;
    this.log(`# started ${bin} ${args.join(' ')} (pid ${child.pid})`);
    return new Promise((resolve, reject) => {
      let lineBuf = '';
      const timer = setTimeout(
          () =>
              reject(new Error(`no ${this.portRe} line on stderr within ${LISTEN_DEADLINE_MS} ms`)),
          LISTEN_DEADLINE_MS);
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (chunk) => {
        this.stderr = (this.stderr + chunk).slice(-MAX_STDERR_KEEP);
        lineBuf += chunk;
        const lines = lineBuf.split('\n');
        lineBuf = lines.pop().slice(-MAX_STDERR_KEEP);
        for (const line of lines) {
          const m = this.portRe.exec(line);
          if (m) {
            clearTimeout(timer);
            resolve(Number(m[1]));
          }
        }
      });
      child.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      child.on('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`server exited early: code=${code} signal=${signal}`));
      });
    });
  }

  // SIGTERM, then SIGKILL if it does not exit in time; removes the data dir.
  async stop() {
    const child = this.child;
    this.child = null;
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      process.kill(child.pid, 'SIGTERM');
      const timer =
          new Promise((resolve) => setTimeout(() => resolve('timeout'), STOP_DEADLINE_MS));
      if ((await Promise.race([exited, timer])) === 'timeout') {
        this.log(`# server pid ${child.pid} ignored SIGTERM for ${STOP_DEADLINE_MS} ms; SIGKILL`);
        process.kill(child.pid, 'SIGKILL');
        await exited;
      }
    }
    this.removeDataDir();
  }

  // The last `lines` lines of the server's stderr, for failure reports.
  stderrTail(lines = 40) {
    return this.stderr.split('\n').slice(-lines).join('\n');
  }

  killNow() {
    if (this.child && this.child.exitCode === null) {
      try {
        process.kill(this.child.pid, 'SIGKILL');
      } catch (_) {
        // already gone
      }
    }
    this.removeDataDir();
  }

  removeDataDir() {
    if (this.dataDir) fs.rmSync(this.dataDir, {recursive: true, force: true});
    this.dataDir = null;
  }
}

module.exports = {
  HavenServer,
  havenBinary
};
