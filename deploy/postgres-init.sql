-- The service's own login role, run once by the postgres image when it creates the database (an empty
-- volume; on an existing one, run this file by hand: psql -U cds -d cds -f postgres-init.sql, with
-- SERVICE_DB_PASSWORD set). The service needs no more than its tables: CREATE in a schema the first
-- time it starts, then SELECT and INSERT (docs/feedback.md). Connecting as the superuser the image
-- creates would hand whoever reads CDS_FEEDBACK_DB every database and, through COPY ... PROGRAM, a
-- shell in this pod.
-- The schema has the role's name, so PostgreSQL's default search_path ("$user", public) puts the tables
-- there with no setting in the URL; `cds-service feedback-report` run as another role says what to add.
\getenv service_password SERVICE_DB_PASSWORD
CREATE ROLE cds_service LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'service_password';
CREATE SCHEMA cds_service AUTHORIZATION cds_service;
