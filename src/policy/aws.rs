//! AWS-aware adjudication: which IAM action and resource a request is, and
//! whether a scope's AWS rules allow it.
//!
//! Three protocols are understood: the JSON protocol (`X-Amz-Target`), the
//! query protocol (`Action=` in the query string or a form body), and S3's
//! REST API (path-style and virtual-hosted). A request none of them explains
//! maps to nothing, and a scope refuses it unless it allows every action.
//!
//! Matching follows IAM: actions compare without regard to case, and in
//! action and resource patterns `*` matches any run of characters (slashes
//! included) and `?` any one character.

use crate::credentials::sigv4::is_s3_label;
use std::sync::Arc;

/// The IAM view of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsRequest {
    /// `service:Operation`, as IAM spells it (`s3:GetObject`).
    pub action: String,
    /// The resource ARN, when the protocol names one (S3); `None` otherwise,
    /// and then only the session policy constrains the resource.
    pub resource: Option<String>,
}

/// What the mapper needs from a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The HTTP method.
    pub method: &'a str,
    /// The decoded path as the upstream will see it.
    pub path: &'a str,
    /// The raw query string.
    pub query: Option<&'a str>,
    /// The `X-Amz-Target` header.
    pub target: Option<&'a str>,
    /// The form-encoded body, as far as it was read.
    pub form_body: FormBody<'a>,
    /// Something makes the request's meaning unclear to this mapper: a
    /// header that decides it (`X-Amz-Target`, `Content-Type`) sent twice or
    /// unreadable, or an S3 header that turns one action into another
    /// (`x-amz-copy-source`, an ACL or object-lock header).
    pub ambiguous: bool,
    /// The upstream host (for virtual-hosted S3 buckets).
    pub host: &'a str,
    /// The signing service (`s3`, `dynamodb`), which is also the IAM prefix.
    pub service: &'a str,
}

/// A request's form body, as the mapper sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormBody<'a> {
    /// The request has no form-encoded body.
    None,
    /// The whole form body.
    Complete(&'a [u8]),
    /// A form body too large to read: its `Action` cannot be known.
    Unread,
}

/// Maps a request to its IAM action and resource, or to nothing when the
/// request could mean more than one thing. The protocol follows the service:
/// S3 is REST only; other services say their operation once, in
/// `X-Amz-Target` or in one `Action` parameter (query string or form body).
pub fn classify(view: &RequestView<'_>) -> Option<AwsRequest> {
    if view.ambiguous {
        return None;
    }
    if view.service == "s3" {
        // S3 ignores `X-Amz-Target`; an agent that sends one is hiding something.
        return match view.target {
            Some(_) => None,
            None => classify_s3(view),
        };
    }
    let mut actions: Vec<String> = params(view.query.unwrap_or_default().as_bytes(), "Action");
    match view.form_body {
        FormBody::Complete(body) => actions.extend(params(body, "Action")),
        FormBody::Unread => return None,
        FormBody::None => {}
    }
    let operation = match (view.target, actions.as_slice()) {
        (Some(target), []) => target.rsplit('.').next()?.to_owned(),
        (None, [action]) => action.clone(),
        _ => return None,
    };
    valid_operation(&operation).then(|| AwsRequest {
        action: format!("{}:{operation}", view.service),
        resource: None,
    })
}

fn params(text: &[u8], name: &str) -> Vec<String> {
    form_urlencoded::parse(text)
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .collect()
}

fn valid_operation(op: &str) -> bool {
    !op.is_empty() && op.len() <= 128 && op.chars().all(|c| c.is_ascii_alphanumeric())
}

fn has_param(query: Option<&str>, name: &str) -> bool {
    query.is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == name))
}

/// S3 subresources that change which action a request is; any other
/// subresource is not mapped.
const S3_NEUTRAL_PARAMS: [&str; 12] = [
    "list-type",
    "prefix",
    "delimiter",
    "max-keys",
    "continuation-token",
    "start-after",
    "encoding-type",
    "fetch-owner",
    "marker",
    "versionId",
    "x-id",
    "partNumber",
];

fn classify_s3(view: &RequestView<'_>) -> Option<AwsRequest> {
    let (bucket, key) = s3_bucket_and_key(view.host, view.path);
    let query = view.query.filter(|q| !q.is_empty());
    let params: Vec<String> = query
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, _)| k.into_owned())
                .collect()
        })
        .unwrap_or_default();
    let special: Vec<&str> = params
        .iter()
        .map(String::as_str)
        .filter(|p| !S3_NEUTRAL_PARAMS.contains(p))
        .collect();
    let action = match (bucket.as_deref(), key.as_deref()) {
        (None, _) => match (view.method, special.as_slice()) {
            ("GET", []) => "ListAllMyBuckets",
            _ => return None,
        },
        (Some(_), None) => match (view.method, special.as_slice()) {
            ("GET" | "HEAD", []) => "ListBucket",
            ("GET", ["versions"]) => "ListBucketVersions",
            ("GET", ["location"]) => "GetBucketLocation",
            ("GET", ["uploads"]) => "ListBucketMultipartUploads",
            ("PUT", []) => "CreateBucket",
            ("DELETE", []) => "DeleteBucket",
            _ => return None,
        },
        (Some(_), Some(_)) => match (view.method, special.as_slice()) {
            ("GET" | "HEAD", []) if has_param(query, "versionId") => "GetObjectVersion",
            ("GET" | "HEAD", []) => "GetObject",
            ("PUT", []) => "PutObject",
            ("DELETE", []) if has_param(query, "versionId") => "DeleteObjectVersion",
            ("DELETE", []) => "DeleteObject",
            ("GET", ["tagging"]) => "GetObjectTagging",
            ("PUT", ["tagging"]) => "PutObjectTagging",
            ("GET", ["acl"]) => "GetObjectAcl",
            // Multipart uploads need PutObject for every step.
            ("POST", ["uploads"]) | ("PUT" | "POST", ["uploadId"]) => "PutObject",
            ("GET", ["uploadId"]) => "ListMultipartUploadParts",
            ("DELETE", ["uploadId"]) => "AbortMultipartUpload",
            _ => return None,
        },
    };
    let resource = match (&bucket, &key) {
        (None, _) => "*".to_owned(),
        (Some(bucket), None) => format!("arn:aws:s3:::{bucket}"),
        (Some(bucket), Some(key)) => format!("arn:aws:s3:::{bucket}/{key}"),
    };
    Some(AwsRequest {
        action: format!("s3:{action}"),
        resource: Some(resource),
    })
}

/// The bucket and key of an S3 request: the bucket from a virtual-hosted
/// name (`bucket.s3.region.amazonaws.com`) or the first path segment.
pub fn s3_bucket_and_key(host: &str, path: &str) -> (Option<String>, Option<String>) {
    let path = path.strip_prefix('/').unwrap_or(path);
    let virtual_bucket = s3_virtual_bucket(host);
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    match virtual_bucket {
        Some(bucket) => (Some(bucket.to_owned()), non_empty(path)),
        None => match path.split_once('/') {
            Some((bucket, key)) => (non_empty(bucket), non_empty(key)),
            None => (non_empty(path), None),
        },
    }
}

/// The bucket a virtual-hosted S3 name carries: the labels before the last
/// `s3` or `s3-<region>` label (`logs.s3bak.s3.us-east-1.amazonaws.com` is
/// the bucket `logs.s3bak`).
pub fn s3_virtual_bucket(host: &str) -> Option<&str> {
    let stem = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    let labels: Vec<&str> = stem.split('.').collect();
    let i = labels.iter().rposition(|l| is_s3_label(l))?;
    if i == 0 {
        return None;
    }
    let bucket_len = labels[..i].iter().map(|l| l.len() + 1).sum::<usize>() - 1;
    Some(&stem[..bucket_len])
}

/// One compiled AWS rule of a scope.
#[derive(Debug, Clone)]
pub struct AwsRule {
    /// The rule's id, as decisions name it.
    pub id: Arc<str>,
    /// Allow or deny.
    pub allow: bool,
    /// IAM action patterns.
    pub actions: Vec<String>,
    /// Resource ARN patterns (`*` when the rule names none).
    pub resources: Vec<String>,
}

impl AwsRule {
    /// Whether the rule covers `request`.
    pub fn matches(&self, request: &AwsRequest) -> bool {
        self.actions.iter().any(|p| {
            wildcard(
                &p.to_ascii_lowercase(),
                &request.action.to_ascii_lowercase(),
            )
        }) && match &request.resource {
            Some(resource) => self.resources.iter().any(|p| wildcard(p, resource)),
            // Without a resource, only a rule for every resource covers
            // it; the session policy holds the finer limits.
            None => self.resources.iter().any(|p| p == "*"),
        }
    }

    /// Whether the rule allows every action on every resource.
    pub fn allows_everything(&self) -> bool {
        self.allow
            && self.actions.iter().any(|a| a == "*")
            && self.resources.iter().any(|r| r == "*")
    }
}

/// IAM wildcard matching: `*` any run of characters, `?` exactly one.
/// Linear in practice: one backtrack point, as in the path matcher.
pub fn wildcard(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
#[path = "aws_tests.rs"]
mod tests;
