//! A real S3 protocol server (s3s-fs over a directory) on 127.0.0.1 for the tests
//! that need one, with the credentials `testkey` / `testsecret`.
#![allow(dead_code)]

use std::net::SocketAddr;

use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result};

/// The access key the server accepts.
pub const ACCESS_KEY: &str = "testkey";
/// Its secret.
pub const SECRET_KEY: &str = "testsecret";

/// Start an S3 server over a directory; returns its address. The server
/// lives on its own runtime thread until the process ends.
pub fn start_s3(root: &std::path::Path) -> SocketAddr {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder as ConnBuilder;
    let root = root.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let fs = Lenient(s3s_fs::FileSystem::new(&root).unwrap());
            let mut b = s3s::service::S3ServiceBuilder::new(fs);
            b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
            let service = b.build();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let (sock, _) = listener.accept().await.unwrap();
                let conn = http
                    .serve_connection(TokioIo::new(sock), service.clone())
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
    });
    rx.recv().unwrap()
}

/// s3s-fs as real S3 stores answer: an empty `delimiter=` parameter, which minio-go
/// (restic's S3 client) sends with every recursive listing, means no delimiter. s3s-fs
/// 0.14 would take it for one and list nothing below the first level.
struct Lenient(s3s_fs::FileSystem);

/// The S3 implementation: `$name`s passed to s3s-fs unchanged, listings with an empty
/// delimiter taken as listings without one. (A macro writes the whole impl, so that
/// `async_trait` sees the methods it generates.)
macro_rules! lenient {
    ($($name:ident: $input:ident => $output:ident),* $(,)?) => {
        #[async_trait::async_trait]
        impl S3 for Lenient {
            $(
                async fn $name(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    self.0.$name(req).await
                }
            )*

            async fn list_objects(
                &self,
                mut req: S3Request<ListObjectsInput>,
            ) -> S3Result<S3Response<ListObjectsOutput>> {
                if req.input.delimiter.as_deref() == Some("") {
                    req.input.delimiter = None;
                }
                self.0.list_objects(req).await
            }

            async fn list_objects_v2(
                &self,
                mut req: S3Request<ListObjectsV2Input>,
            ) -> S3Result<S3Response<ListObjectsV2Output>> {
                if req.input.delimiter.as_deref() == Some("") {
                    req.input.delimiter = None;
                }
                self.0.list_objects_v2(req).await
            }
        }
    };
}

lenient! {
    create_bucket: CreateBucketInput => CreateBucketOutput,
    delete_bucket: DeleteBucketInput => DeleteBucketOutput,
    head_bucket: HeadBucketInput => HeadBucketOutput,
    list_buckets: ListBucketsInput => ListBucketsOutput,
    get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput,
    put_object: PutObjectInput => PutObjectOutput,
    get_object: GetObjectInput => GetObjectOutput,
    head_object: HeadObjectInput => HeadObjectOutput,
    copy_object: CopyObjectInput => CopyObjectOutput,
    delete_object: DeleteObjectInput => DeleteObjectOutput,
    delete_objects: DeleteObjectsInput => DeleteObjectsOutput,
    create_multipart_upload: CreateMultipartUploadInput => CreateMultipartUploadOutput,
    upload_part: UploadPartInput => UploadPartOutput,
    list_parts: ListPartsInput => ListPartsOutput,
    complete_multipart_upload: CompleteMultipartUploadInput => CompleteMultipartUploadOutput,
    abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput,
}
