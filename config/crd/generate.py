"""Writes this project's CustomResourceDefinitions into bases/.

The KubeArmorPolicy schema repeats a handful of shapes (match rules with action, severity, tags and
fromSource) across process, file, network, capabilities and syscalls; building them from named
pieces keeps the validation the API server enforces reviewable in one screen. The validation
matches the upstream Nimbus and KubeArmor CRDs; tests/unit/test_crds.py checks that field by field.

    python config/crd/generate.py          # rewrite bases/*.yaml
    python config/crd/generate.py --check  # fail if bases/ is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

Schema = dict[str, Any]
BASES = Path(__file__).resolve().parent / "bases"

# --- building blocks -----------------------------------------------------------------------------

def string(**extra: Any) -> Schema:
    return {"type": "string", **extra}


def boolean() -> Schema:
    return {"type": "boolean"}


def int32() -> Schema:
    return {"type": "integer", "format": "int32"}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def obj(properties: Schema, required: list[str] | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, **extra}
    if required:
        schema["required"] = required
    return schema


def string_map() -> Schema:
    return {"type": "object", "additionalProperties": {"type": "string"}}


def match_labels() -> Schema:
    return obj({"matchLabels": string_map()})


def params() -> Schema:
    return {"type": "object", "additionalProperties": array(string())}


ACTION = string(enum=["Allow", "Audit", "Block"])
SEVERITY = {"type": "integer", "minimum": 1, "maximum": 10}
TAGS = array(string())
ABSOLUTE_FILE = string(pattern=r"^\/+.*[^\/]$", maxLength=200)
ABSOLUTE_DIR = string(pattern=r"^\/$|^\/.*\/$")
CAPABILITIES = (
    "chown|dac_override|dac_read_search|fowner|fsetid|kill|setgid|setuid|setpcap|linux_immutable|"
    "net_bind_service|net_broadcast|net_admin|net_raw|ipc_lock|ipc_owner|sys_module|sys_rawio|"
    "sys_chroot|sys_ptrace|sys_pacct|sys_admin|sys_boot|sys_nice|sys_resource|sys_time|"
    "sys_tty_config|mknod|lease|audit_write|audit_control|setfcap|mac_override|mac_admin"
)
PROTOCOLS = "|".join(
    f"{p}|{p.upper()}" for p in
    ("tcp", "udp", "raw", "icmp", "icmpv6", "sctp", "stream", "dgram", "rdm", "seqpacket", "dccp",
     "packet", "all")
)
# The x86_64 system call table up to rseq, in table order, as KubeArmor accepts it.
SYSCALLS = """
read write open close stat fstat lstat poll lseek mmap mprotect munmap brk rt_sigaction
rt_sigprocmask rt_sigreturn ioctl pread64 pwrite64 readv writev access pipe select sched_yield
mremap msync mincore madvise shmget shmat shmctl dup dup2 pause nanosleep getitimer alarm
setitimer getpid sendfile socket connect accept sendto recvfrom sendmsg recvmsg shutdown bind
listen getsockname getpeername socketpair setsockopt getsockopt clone fork vfork execve exit wait4
kill uname semget semop semctl shmdt msgget msgsnd msgrcv msgctl fcntl flock fsync fdatasync
truncate ftruncate getdents getcwd chdir fchdir rename mkdir rmdir creat link unlink symlink
readlink chmod fchmod chown fchown lchown umask gettimeofday getrlimit getrusage sysinfo times
ptrace getuid syslog getgid setuid setgid geteuid getegid setpgid getppid getpgrp setsid setreuid
setregid getgroups setgroups setresuid getresuid setresgid getresgid getpgid setfsuid setfsgid
getsid capget capset rt_sigpending rt_sigtimedwait rt_sigqueueinfo rt_sigsuspend sigaltstack utime
mknod uselib personality ustat statfs fstatfs sysfs getpriority setpriority sched_setparam
sched_getparam sched_setscheduler sched_getscheduler sched_get_priority_max sched_get_priority_min
sched_rr_get_interval mlock munlock mlockall munlockall vhangup modify_ldt pivot_root _sysctl
prctl arch_prctl adjtimex setrlimit chroot sync acct settimeofday mount umount2 swapon swapoff
reboot sethostname setdomainname iopl ioperm create_module init_module delete_module
get_kernel_syms query_module quotactl nfsservctl getpmsg putpmsg afs_syscall tuxcall security
gettid readahead setxattr lsetxattr fsetxattr getxattr lgetxattr fgetxattr listxattr llistxattr
flistxattr removexattr lremovexattr fremovexattr tkill time futex sched_setaffinity
sched_getaffinity set_thread_area io_setup io_destroy io_getevents io_submit io_cancel
get_thread_area lookup_dcookie epoll_create epoll_ctl_old epoll_wait_old remap_file_pages
getdents64 set_tid_address restart_syscall semtimedop fadvise64 timer_create timer_settime
timer_gettime timer_getoverrun timer_delete clock_settime clock_gettime clock_getres
clock_nanosleep exit_group epoll_wait epoll_ctl tgkill utimes vserver mbind set_mempolicy
get_mempolicy mq_open mq_unlink mq_timedsend mq_timedreceive mq_notify mq_getsetattr kexec_load
waitid add_key request_key keyctl ioprio_set ioprio_get inotify_init inotify_add_watch
inotify_rm_watch migrate_pages openat mkdirat mknodat fchownat futimesat newfstatat unlinkat
renameat linkat symlinkat readlinkat fchmodat faccessat pselect6 ppoll unshare set_robust_list
get_robust_list splice tee sync_file_range vmsplice move_pages utimensat epoll_pwait signalfd
timerfd_create eventfd fallocate timerfd_settime timerfd_gettime accept4 signalfd4 eventfd2
epoll_create1 dup3 pipe2 inotify_init1 preadv pwritev rt_tgsigqueueinfo perf_event_open recvmmsg
fanotify_init fanotify_mark prlimit64 name_to_handle_at open_by_handle_at clock_adjtime syncfs
sendmmsg setns getcpu process_vm_readv process_vm_writev kcmp finit_module sched_setattr
sched_getattr renameat2 seccomp getrandom memfd_create kexec_file_load bpf execveat userfaultfd
membarrier mlock2 copy_file_range preadv2 pwritev2 pkey_mprotect pkey_alloc pkey_free statx
io_pgetevents rseq
""".split()


def annotated(properties: Schema) -> Schema:
    """Every KubeArmor rule and section but the syscall rules may carry its own severity, tags,
    message and action."""
    return {**properties, "severity": SEVERITY, "tags": TAGS, "message": string(), "action": ACTION}


def from_source() -> Schema:
    return array(obj({"path": ABSOLUTE_FILE}))


def syscall_source() -> Schema:
    return array(obj({"path": ABSOLUTE_FILE, "dir": string(), "recursive": boolean()}))


def section(**rules: Schema) -> Schema:
    return obj(annotated(rules))


def kubearmor_spec() -> Schema:
    path_rule = {"path": ABSOLUTE_FILE, "ownerOnly": boolean(), "fromSource": from_source()}
    dir_rule = {"dir": ABSOLUTE_DIR, "recursive": boolean(), "ownerOnly": boolean(),
                "fromSource": from_source()}
    pattern_rule = {"pattern": string(), "ownerOnly": boolean()}
    syscall_names = array(string(enum=SYSCALLS))
    return obj({
        "selector": obj({
            "matchLabels": string_map(),
            "matchExpressions": array(obj({
                "key": string(enum=["label"]),
                "operator": string(enum=["In", "NotIn"]),
                "values": array(string()),
            })),
        }),
        "process": section(
            matchPaths=array(obj(annotated({
                **path_rule, "execname": string(pattern=r"^[^\/]+$"), "pts": boolean(),
                "allowedArgs": array(string()),
            }))),
            matchDirectories=array(obj(annotated({**dir_rule, "pts": boolean()}), ["dir"])),
            matchPatterns=array(obj(annotated(pattern_rule), ["pattern"])),
        ),
        "file": section(
            matchPaths=array(obj(annotated({**path_rule, "readOnly": boolean(), "pts": boolean()}),
                                 ["path"])),
            matchDirectories=array(obj(annotated({**dir_rule, "readOnly": boolean(),
                                                  "pts": boolean()}), ["dir"])),
            matchPatterns=array(obj(annotated({**pattern_rule, "readOnly": boolean()}),
                                    ["pattern"])),
        ),
        "network": section(
            matchProtocols=array(obj(annotated({
                "protocol": string(pattern=f"({PROTOCOLS})$"), "fromSource": from_source(),
                "pts": boolean(),
            }), ["protocol"])),
            matchDNSQueries=array(obj(annotated({"domain": string(), "fromSource": from_source()}),
                                      ["domain"])),
        ),
        "capabilities": section(
            matchCapabilities=array(obj(annotated({
                "capability": string(pattern=f"({CAPABILITIES})$"), "fromSource": from_source(),
            }), ["capability"])),
        ),
        "syscalls": obj({
            "matchSyscalls": array(obj({"syscall": syscall_names, "fromSource": syscall_source()})),
            "matchPaths": array(obj({
                "path": string(pattern=r"(^\/+.*[^\/]$)|(^\/$|^\/.*\/$)"),
                "recursive": boolean(), "syscall": syscall_names, "fromSource": syscall_source(),
            })),
            "severity": SEVERITY, "tags": TAGS, "message": string(),
        }),
        "presets": array(obj({"name": string(), "action": ACTION})),
        "apparmor": string(),
        "severity": SEVERITY,
        "tags": TAGS,
        "message": string(),
        "action": ACTION,
    })


def nimbus_rules() -> Schema:
    return array(obj({
        "id": string(),
        "type": string(),
        "description": string(),
        "rule": obj({"action": string(), "params": params()}, ["action"]),
    }, ["id", "rule"]))


def nimbus_policy_status() -> Schema:
    return obj({
        "status": string(),
        "lastUpdated": string(format="date-time"),
        "numberOfAdapterPolicies": int32(),
        "adapterPolicies": array(string()),
    }, ["numberOfAdapterPolicies", "status"])


def binding_intents() -> Schema:
    return array(obj({"name": string()}, ["name"]))


def namespace_selector() -> Schema:
    return obj({"matchNames": array(string()), "excludeNames": array(string())})


# --- the resources ------------------------------------------------------------------------------

def column(name: str, path: str, kind: str = "string", priority: int | None = None) -> Schema:
    col: Schema = {"name": name, "type": kind, "jsonPath": path}
    if priority is not None:
        col["priority"] = priority
    return col


AGE = column("Age", ".metadata.creationTimestamp", "date")


def crd(group: str, version: str, kind: str, plural: str, short: str, scope: str,
        spec: Schema, status: Schema, columns: list[Schema], description: str) -> Schema:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}",
                     "labels": {"app.kubernetes.io/part-of": "nimbus-kubearmor"}},
        "spec": {
            "group": group,
            "scope": scope,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural,
                      "singular": kind.lower(), "shortNames": [short]},
            "versions": [{
                "name": version,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": {
                    "description": description,
                    "type": "object",
                    "properties": {
                        "apiVersion": string(), "kind": string(), "metadata": {"type": "object"},
                        "spec": spec, "status": status,
                    },
                }},
            }],
        },
    }


NIMBUS = "intent.security.nimbus.com"
NIMBUS_POLICY_COLUMNS = [column("Status", ".status.status"), AGE,
                         column("Policies", ".status.numberOfAdapterPolicies", "integer")]


def definitions() -> dict[str, Schema]:
    return {
        "security.kubearmor.com_kubearmorpolicies.yaml": crd(
            "security.kubearmor.com", "v1", "KubeArmorPolicy", "kubearmorpolicies", "ksp",
            "Namespaced", kubearmor_spec(), obj({"status": string()}),
            [AGE, column("Action", ".spec.action", priority=10),
             column("Selector", ".spec.selector.matchLabels", priority=10)],
            "A KubeArmor runtime enforcement policy for the workloads its selector matches."),
        f"{NIMBUS}_nimbuspolicies.yaml": crd(
            NIMBUS, "v1alpha1", "NimbusPolicy", "nimbuspolicies", "np", "Namespaced",
            obj({"selector": match_labels(), "rules": nimbus_rules()}, ["rules", "selector"]),
            nimbus_policy_status(), NIMBUS_POLICY_COLUMNS,
            "The security intents bound to a namespace's workloads, for the adapters to enforce."),
        f"{NIMBUS}_clusternimbuspolicies.yaml": crd(
            NIMBUS, "v1alpha1", "ClusterNimbusPolicy", "clusternimbuspolicies", "cwnp", "Cluster",
            obj({"nsSelector": namespace_selector(), "workloadSelector": match_labels(),
                 "nodeSelector": match_labels(), "rules": nimbus_rules()}, ["rules"]),
            nimbus_policy_status(), NIMBUS_POLICY_COLUMNS,
            "The security intents bound cluster-wide, for the adapters to enforce."),
        f"{NIMBUS}_securityintents.yaml": crd(
            NIMBUS, "v1alpha1", "SecurityIntent", "securityintents", "si", "Cluster",
            obj({"intent": obj({
                "id": string(pattern="^[a-zA-Z0-9]*$"), "description": string(),
                "action": string(), "params": params(), "tags": array(string()),
                "severity": string(default="Low"),
            }, ["action", "id"])}, ["intent"]),
            obj({"id": string(), "action": string(), "status": string()},
                ["action", "id", "status"]),
            [column("Status", ".status.status"), AGE,
             column("ID", ".spec.intent.id", priority=1),
             column("Action", ".spec.intent.action", priority=1)],
            "One security intent: what to prevent, and whether to block or audit it."),
        f"{NIMBUS}_securityintentbindings.yaml": crd(
            NIMBUS, "v1alpha1", "SecurityIntentBinding", "securityintentbindings", "sib",
            "Namespaced",
            obj({"intents": binding_intents(), "selector": obj({"workloadSelector": match_labels()}),
                 "cel": array(string())}, ["intents", "selector"]),
            obj({"status": string(), "lastUpdated": string(format="date-time"),
                 "numberOfBoundIntents": int32(), "boundIntents": array(string()),
                 "nimbusPolicy": string()}, ["nimbusPolicy", "numberOfBoundIntents", "status"]),
            [column("Status", ".status.status"), AGE,
             column("Intents", ".status.numberOfBoundIntents", "integer"),
             column("NimbusPolicy", ".status.nimbusPolicy")],
            "Binds security intents to the workloads of one namespace."),
        f"{NIMBUS}_clustersecurityintentbindings.yaml": crd(
            NIMBUS, "v1alpha1", "ClusterSecurityIntentBinding", "clustersecurityintentbindings",
            "csib", "Cluster",
            obj({"intents": binding_intents(),
                 "selector": obj({"nsSelector": namespace_selector(),
                                  "workloadSelector": match_labels(),
                                  "nodeSelector": match_labels()}),
                 "cel": array(string())}, ["intents"]),
            obj({"status": string(), "lastUpdated": string(format="date-time"),
                 "numberOfBoundIntents": int32(), "boundIntents": array(string()),
                 "numberOfNimbusPolicies": int32(), "nimbusPolicyNamespaces": array(string()),
                 "clusterNimbusPolicy": string()},
                ["clusterNimbusPolicy", "numberOfBoundIntents", "numberOfNimbusPolicies",
                 "status"]),
            [column("Status", ".status.status"), AGE,
             column("Intents", ".status.numberOfBoundIntents", "integer"),
             column("NimbusPolicies", ".status.numberOfNimbusPolicies", "integer"),
             column("ClusterNimbusPolicy", ".status.clusterNimbusPolicy")],
            "Binds security intents to workloads across the namespaces its selector picks."),
    }


def render(definition: Schema) -> str:
    header = "# Generated by config/crd/generate.py; edit that file, then `make crds`.\n"
    return header + yaml.safe_dump(definition, sort_keys=False, width=100)


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    stale = []
    BASES.mkdir(exist_ok=True)
    expected = {name: render(d) for name, d in definitions().items()}
    for name, text in expected.items():
        path = BASES / name
        if path.exists() and path.read_text() == text:
            continue
        stale.append(name)
        if not check:
            path.write_text(text)
    extra = sorted(p.name for p in BASES.glob("*.yaml") if p.name not in expected)
    if check and (stale or extra):
        print(f"config/crd/bases is out of date ({', '.join(stale + extra)}); run `make crds`",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
