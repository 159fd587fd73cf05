#![allow(clippy::unwrap_used)]

use super::*;

fn s3(method: &str, path: &str, query: Option<&str>) -> Option<AwsRequest> {
    classify(&RequestView {
        method,
        path,
        query,
        target: None,
        form_body: FormBody::None,
        ambiguous: false,
        host: "127.0.0.1",
        service: "s3",
    })
}

fn action(request: Option<AwsRequest>) -> Option<(String, Option<String>)> {
    request.map(|r| (r.action, r.resource))
}

#[test]
fn s3_rest_requests_map_to_iam_actions() {
    let object = Some("arn:aws:s3:::reports/2026/q1.csv".to_owned());
    let bucket = Some("arn:aws:s3:::reports".to_owned());
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, &'a str, Option<String>);
    let cases: Vec<Case<'_>> = vec![
        (
            "GET",
            "/reports/2026/q1.csv",
            None,
            "s3:GetObject",
            object.clone(),
        ),
        (
            "GET",
            "/reports/2026/q1.csv",
            Some("x-id=GetObject"),
            "s3:GetObject",
            object.clone(),
        ),
        (
            "HEAD",
            "/reports/2026/q1.csv",
            None,
            "s3:GetObject",
            object.clone(),
        ),
        (
            "PUT",
            "/reports/2026/q1.csv",
            None,
            "s3:PutObject",
            object.clone(),
        ),
        (
            "DELETE",
            "/reports/2026/q1.csv",
            None,
            "s3:DeleteObject",
            object.clone(),
        ),
        (
            "GET",
            "/reports",
            Some("list-type=2&prefix=2026%2F"),
            "s3:ListBucket",
            bucket.clone(),
        ),
        ("GET", "/reports/", None, "s3:ListBucket", bucket.clone()),
        ("PUT", "/reports", None, "s3:CreateBucket", bucket.clone()),
        (
            "DELETE",
            "/reports",
            None,
            "s3:DeleteBucket",
            bucket.clone(),
        ),
        (
            "GET",
            "/",
            None,
            "s3:ListAllMyBuckets",
            Some("*".to_owned()),
        ),
        (
            "POST",
            "/reports/big.bin",
            Some("uploads"),
            "s3:PutObject",
            Some("arn:aws:s3:::reports/big.bin".into()),
        ),
    ];
    for (method, path, query, expected, resource) in cases {
        assert_eq!(
            action(s3(method, path, query)),
            Some((expected.to_owned(), resource)),
            "{method} {path} {query:?}"
        );
    }
}

#[test]
fn unknown_s3_subresources_map_to_nothing() {
    assert_eq!(s3("PUT", "/reports", Some("policy")), None);
    assert_eq!(s3("POST", "/reports", Some("delete")), None);
    assert_eq!(s3("PATCH", "/reports/k", None), None);
}

#[test]
fn virtual_hosted_buckets_come_from_the_host() {
    assert_eq!(
        s3_bucket_and_key("reports.s3.us-east-1.amazonaws.com", "/a/b.txt"),
        (Some("reports".into()), Some("a/b.txt".into()))
    );
    assert_eq!(
        s3_bucket_and_key("s3.us-east-1.amazonaws.com", "/reports/a"),
        (Some("reports".into()), Some("a".into()))
    );
    assert_eq!(s3_bucket_and_key("127.0.0.1", "/"), (None, None));
    assert_eq!(
        s3_bucket_and_key("logs.s3bak.s3.us-east-1.amazonaws.com", "/k"),
        (Some("logs.s3bak".into()), Some("k".into()))
    );
    assert_eq!(
        s3_bucket_and_key("s3-x.s3.amazonaws.com", "/k"),
        (Some("s3-x".into()), Some("k".into()))
    );
    assert_eq!(
        s3_virtual_bucket("s3.dualstack.us-east-1.amazonaws.com"),
        None
    );
}

#[test]
fn json_and_query_protocols_name_their_operation() {
    let json = classify(&RequestView {
        method: "POST",
        path: "/",
        query: None,
        target: Some("DynamoDB_20120810.GetItem"),
        form_body: FormBody::None,
        ambiguous: false,
        host: "dynamodb.us-east-1.amazonaws.com",
        service: "dynamodb",
    });
    assert_eq!(json.unwrap().action, "dynamodb:GetItem");
    let form = classify(&RequestView {
        method: "POST",
        path: "/",
        query: None,
        target: None,
        form_body: FormBody::Complete(b"Action=SendMessage&Version=2012-11-05&QueueUrl=x"),
        ambiguous: false,
        host: "sqs.us-east-1.amazonaws.com",
        service: "sqs",
    });
    assert_eq!(form.unwrap().action, "sqs:SendMessage");
    let in_query = classify(&RequestView {
        method: "GET",
        path: "/",
        query: Some("Action=GetCallerIdentity&Version=2011-06-15"),
        target: None,
        form_body: FormBody::None,
        ambiguous: false,
        host: "sts.amazonaws.com",
        service: "sts",
    });
    assert_eq!(in_query.unwrap().action, "sts:GetCallerIdentity");
    let bogus = classify(&RequestView {
        method: "POST",
        path: "/",
        query: Some("Action=Get%2FThing"),
        target: None,
        form_body: FormBody::None,
        ambiguous: false,
        host: "sts.amazonaws.com",
        service: "sts",
    });
    assert_eq!(bogus, None);
}

fn view<'a>(
    target: Option<&'a str>,
    query: Option<&'a str>,
    body: FormBody<'a>,
) -> RequestView<'a> {
    RequestView {
        method: "POST",
        path: "/",
        query,
        target,
        form_body: body,
        ambiguous: false,
        host: "sqs.us-east-1.amazonaws.com",
        service: "sqs",
    }
}

#[test]
fn a_request_that_names_its_operation_twice_maps_to_nothing() {
    let body = FormBody::Complete(b"Action=DeleteQueue");
    // Target and Action disagree, or both are given.
    assert_eq!(
        classify(&view(Some("AmazonSQS.ListQueues"), None, body)),
        None
    );
    assert_eq!(
        classify(&view(
            Some("AmazonSQS.ListQueues"),
            Some("Action=ListQueues"),
            FormBody::None
        )),
        None
    );
    // Action in the query and in the body, or twice.
    assert_eq!(classify(&view(None, Some("Action=ListQueues"), body)), None);
    assert_eq!(
        classify(&view(
            None,
            Some("Action=ListQueues&Action=DeleteQueue"),
            FormBody::None
        )),
        None
    );
    // A form body too large to read.
    assert_eq!(classify(&view(None, None, FormBody::Unread)), None);
    // S3 ignores X-Amz-Target, so a request that sends one is refused.
    let mut s3 = view(Some("x.ListAllMyBuckets"), None, FormBody::None);
    s3.service = "s3";
    s3.method = "DELETE";
    s3.path = "/b/k";
    assert_eq!(classify(&s3), None);
    let mut ambiguous = view(None, None, body);
    ambiguous.ambiguous = true;
    assert_eq!(classify(&ambiguous), None);
    assert_eq!(
        classify(&view(None, None, body)).unwrap().action,
        "sqs:DeleteQueue"
    );
}

#[test]
fn iam_wildcards() {
    assert!(wildcard("s3:get*", "s3:getobject"));
    assert!(wildcard("*", "anything"));
    assert!(wildcard(
        "arn:aws:s3:::reports/*",
        "arn:aws:s3:::reports/a/b/c"
    ));
    assert!(!wildcard("arn:aws:s3:::reports/*", "arn:aws:s3:::reports"));
    assert!(wildcard("arn:aws:s3:::r?ports", "arn:aws:s3:::reports"));
    assert!(!wildcard("s3:Get", "s3:GetObject"));
    assert!(wildcard("a*b*c", "aXXbYYbZc"));
}

#[test]
fn rules_match_actions_without_case_and_resources_exactly() {
    let rule = AwsRule {
        id: Arc::from("r"),
        allow: true,
        actions: vec!["s3:GetObject".into()],
        resources: vec!["arn:aws:s3:::reports/*".into()],
    };
    let get = AwsRequest {
        action: "s3:getobject".into(),
        resource: Some("arn:aws:s3:::reports/x".into()),
    };
    assert!(rule.matches(&get));
    let elsewhere = AwsRequest {
        resource: Some("arn:aws:s3:::other/x".into()),
        ..get.clone()
    };
    assert!(!rule.matches(&elsewhere));
    // No resource known: only a rule for every resource covers it.
    let unknown = AwsRequest {
        resource: None,
        ..get
    };
    assert!(!rule.matches(&unknown));
    assert!(!rule.allows_everything());
}
