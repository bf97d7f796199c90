use std::path::Path;

use super::*;

const MOUNT: &str = "/sys/fs/cgroup";

fn pattern(text: &str) -> CgroupPattern {
    CgroupPattern::parse(Path::new(text), Path::new(MOUNT)).unwrap()
}

fn refused(text: &str) -> PatternError {
    CgroupPattern::parse(Path::new(text), Path::new(MOUNT)).unwrap_err()
}

#[track_caller]
fn check(text: &str, matching: &[&str], other: &[&str]) {
    let p = pattern(text);
    for rel in matching {
        assert!(p.matches_relative(rel), "{text} must match {rel}");
        assert!(
            p.matches(&Path::new(MOUNT).join(&rel[1..])),
            "{text}: {rel}"
        );
    }
    for rel in other {
        assert!(!p.matches_relative(rel), "{text} must not match {rel}");
    }
}

#[test]
fn star_stays_within_one_component() {
    check(
        "/sys/fs/cgroup/system.slice/docker-*.scope",
        &[
            "/system.slice/docker-0123abcd.scope",
            "/system.slice/docker-.scope",
        ],
        &[
            "/system.slice/docker-1.scope/sub",
            "/system.slice/docker-1/x.scope",
            "/system.slice/docker-1.scopes",
            "/system.slice/podman-1.scope",
            "/system.slice",
            "/other.slice/docker-1.scope",
        ],
    );
}

#[test]
fn several_stars_in_one_component_backtrack() {
    check(
        "/sys/fs/cgroup/kubepods.slice/kubepods-*.slice/kubepods-*-pod*.slice",
        &[
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12_34.slice",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod-pod9.slice",
        ],
        &[
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-12.slice",
            "/kubepods.slice/kubepods-besteffort.slice",
        ],
    );
}

#[test]
fn trailing_double_star_matches_descendants_only() {
    check(
        "/sys/fs/cgroup/kubepods.slice/**",
        &["/kubepods.slice/a", "/kubepods.slice/a/b/c"],
        &[
            "/kubepods.slice",
            "/kubepods.slicex/a",
            "/other/kubepods.slice/a",
        ],
    );
}

#[test]
fn middle_double_star_matches_zero_or_more_components() {
    check(
        "/sys/fs/cgroup/user.slice/**/libpod-*.scope",
        &[
            "/user.slice/libpod-1.scope",
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-ab.scope",
        ],
        &[
            "/user.slicex/libpod-1.scope",
            "/user.slice/xlibpod-1.scope",
            "/user.slice/a/libpod-1.scope/child",
            "/machine.slice/libpod-1.scope",
        ],
    );
}

#[test]
fn leading_double_star_and_star_before_double_star() {
    check(
        "/sys/fs/cgroup/**/cri-containerd-*.scope",
        &["/cri-containerd-1.scope", "/a/b/cri-containerd-2.scope"],
        &["/a/cri-containerd-1.scope/x", "/a/cri-containerd-1.slice"],
    );
    check(
        "/sys/fs/cgroup/t/a*/**/b",
        &["/t/a/b", "/t/abc/x/y/b"],
        &["/t/abc/x/y/bb", "/t/x/b", "/t/a"],
    );
}

#[test]
fn docker_cgroupfs_and_systemd_services() {
    check(
        "/sys/fs/cgroup/docker/*",
        &["/docker/0123"],
        &["/docker", "/docker/1/2"],
    );
    check(
        "/sys/fs/cgroup/system.slice/*.service",
        &["/system.slice/nginx.service"],
        &["/system.slice/session-1.scope", "/system.slice/a.service/b"],
    );
}

#[test]
fn long_patterns_span_several_words() {
    let long = format!("/sys/fs/cgroup/{}*{}", "a".repeat(100), "b".repeat(100));
    let p = pattern(&long);
    assert!(p.matches_relative(&format!("/{}xyz{}", "a".repeat(100), "b".repeat(100))));
    assert!(!p.matches_relative(&format!("/{}xyz{}", "a".repeat(100), "b".repeat(99))));
}

#[test]
fn literal_prefix_and_attach_point() {
    let p = pattern("/sys/fs/cgroup/kubepods.slice/kubepods-*.slice/**");
    assert_eq!(
        p.literal_prefix(),
        Path::new("/sys/fs/cgroup/kubepods.slice")
    );
    assert_eq!(
        pattern("/sys/fs/cgroup/**").literal_prefix(),
        Path::new(MOUNT)
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("a")).unwrap();
    let p = CgroupPattern::parse(&dir.path().join("a/b/c/*"), dir.path()).unwrap();
    assert_eq!(p.attach_point(), dir.path().join("a"));
}

#[test]
fn bad_patterns_are_refused_naming_the_value() {
    let e = refused("/sys/fs/cgroup/a**/b");
    assert_eq!(
        e,
        PatternError::DoubleStarPart("/sys/fs/cgroup/a**/b".into())
    );
    assert!(e.to_string().contains("/sys/fs/cgroup/a**/b"), "{e}");
    assert!(matches!(
        refused("/tmp/docker-*"),
        PatternError::OutsideMount { .. }
    ));
    assert!(matches!(
        refused("/sys/fs/cgroupx/*"),
        PatternError::OutsideMount { .. }
    ));
    assert!(matches!(refused("docker/*"), PatternError::NotAbsolute(_)));
    assert!(matches!(
        refused("/sys/fs/cgroup/../x/*"),
        PatternError::BadComponent(_)
    ));
    assert!(matches!(
        refused("/sys/fs/cgroup/a//*"),
        PatternError::BadComponent(_)
    ));
    assert!(matches!(
        refused("/sys/fs/cgroup/**/**/x"),
        PatternError::RepeatedDoubleStar(_)
    ));
    let deep = format!("/sys/fs/cgroup/{}*", "a/".repeat(15));
    assert!(
        matches!(
            refused(&deep),
            PatternError::TooDeep {
                depth: 16,
                max: 15,
                ..
            }
        ),
        "{deep}"
    );
    let long = format!("/sys/fs/cgroup/{}*", "a".repeat(300));
    let e = refused(&long);
    assert!(
        matches!(e, PatternError::TooLong { tokens: 302, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("at most 255"), "{e}");
}

#[test]
fn relative_paths_are_as_the_kernel_reports_them() {
    let mount = Path::new(MOUNT);
    assert_eq!(
        relative_path(Path::new("/sys/fs/cgroup/a/b"), mount).as_deref(),
        Some("/a/b")
    );
    assert_eq!(relative_path(mount, mount).as_deref(), Some("/"));
    assert_eq!(relative_path(Path::new("/tmp/a"), mount), None);
    assert!(is_pattern(Path::new("/a/*")));
    assert!(!is_pattern(Path::new("/a/b")));
}
