//! The schema: made at first start, its version checked (another major refused).

use super::*;

impl PgStore {
    /// Sets the recorded schema version: lets tests build a database from another
    /// release.
    #[doc(hidden)]
    pub async fn set_schema_version_for_tests(
        &self,
        major: i32,
        minor: i32,
    ) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        self.run(async move {
            let client = inner.client().await.map_err(Broken::into_error)?;
            inner
                .bounded(client.execute(
                    "UPDATE schema_version SET major = $1, minor = $2",
                    &[&major, &minor],
                ))
                .await
                .map_err(Broken::into_error)?;
            Ok(())
        })
        .await
    }
}

impl Inner {
    /// The schema version the database holds, checked as at connect.
    pub(super) async fn schema_found(&self) -> Result<Option<(i32, i32)>, StoreError> {
        let present = self
            .read(
                "SELECT to_regclass('schema_version') IS NOT NULL, \
                        to_regclass('images') IS NOT NULL",
                vec![],
            )
            .await?;
        let (versioned, has_images): (bool, bool) = (present[0].get(0), present[0].get(1));
        if !versioned {
            if has_images {
                return Err(foreign_tables());
            }
            return Ok(None);
        }
        let row = self
            .read("SELECT major, minor FROM schema_version", vec![])
            .await?;
        let (major, minor): (i32, i32) = (row[0].get(0), row[0].get(1));
        if major != SCHEMA_MAJOR {
            return Err(other_major(major, minor));
        }
        Ok(Some((major, minor)))
    }

    pub(super) async fn create_schema(&self) -> Result<(), StoreError> {
        let mut client = self.client().await.map_err(Broken::into_error)?;
        let result = self.create_schema_on(&mut client).await;
        if result.is_err() {
            drop(Object::take(client));
        }
        result
    }

    pub(super) async fn create_schema_on(&self, client: &mut Object) -> Result<(), StoreError> {
        let unavailable = Broken::into_error;
        let tx = self
            .bounded(client.transaction())
            .await
            .map_err(unavailable)?;
        self.bounded(tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK]))
            .await
            .map_err(unavailable)?;
        let encoding: String = self
            .bounded(tx.query_one("SHOW server_encoding", &[]))
            .await
            .map_err(unavailable)?
            .get(0);
        if encoding != "UTF8" {
            return Err(StoreError::Unusable(format!(
                "the database's encoding is {encoding}; image-catalog needs UTF8 \
                 (CREATE DATABASE ... ENCODING 'UTF8')"
            )));
        }
        let present = self
            .bounded(tx.query_one(
                "SELECT to_regclass('schema_version') IS NOT NULL, \
                        to_regclass('images') IS NOT NULL",
                &[],
            ))
            .await
            .map_err(unavailable)?;
        let (versioned, has_images): (bool, bool) = (present.get(0), present.get(1));
        if !versioned {
            if has_images {
                return Err(foreign_tables());
            }
            self.bounded(tx.batch_execute(SCHEMA))
                .await
                .map_err(unavailable)?;
            self.bounded(tx.batch_execute(SCHEMA_1_1))
                .await
                .map_err(unavailable)?;
            self.bounded(tx.execute(
                "INSERT INTO schema_version VALUES ($1, $2)",
                &[&SCHEMA_MAJOR, &SCHEMA_MINOR],
            ))
            .await
            .map_err(unavailable)?;
            log::info!(
                "created the image-catalog schema {SCHEMA_MAJOR}.{SCHEMA_MINOR} in the database"
            );
        } else {
            let row = self
                .bounded(tx.query_one("SELECT major, minor FROM schema_version", &[]))
                .await
                .map_err(unavailable)?;
            let (major, minor): (i32, i32) = (row.get(0), row.get(1));
            if major != SCHEMA_MAJOR {
                return Err(other_major(major, minor));
            }
            // Minors add only: a newer one is read as it is, an older one is brought
            // up here, additively.
            if minor < 1 {
                self.bounded(tx.batch_execute(SCHEMA_1_1))
                    .await
                    .map_err(unavailable)?;
                self.bounded(tx.execute("UPDATE schema_version SET minor = 1", &[]))
                    .await
                    .map_err(unavailable)?;
                log::info!(
                    "upgraded the image-catalog schema in the database in place from \
                     {major}.{minor} to {SCHEMA_MAJOR}.{SCHEMA_MINOR}: the audit trail by image"
                );
            }
        }
        self.bounded(tx.commit()).await.map_err(|b| match b {
            Broken::Before(why) | Broken::InCommit(why) => StoreError::Unavailable(why),
        })?;
        Ok(())
    }
}

pub(super) fn foreign_tables() -> StoreError {
    StoreError::Unusable(
        "the database has an 'images' table but no schema_version: it was not made by \
         image-catalog; give image-catalog a database of its own"
            .into(),
    )
}

pub(super) fn other_major(major: i32, minor: i32) -> StoreError {
    StoreError::Unusable(format!(
        "the database holds the image-catalog schema {major}.{minor}, but this build reads \
         schema {SCHEMA_MAJOR}.x only; run a release that matches it"
    ))
}
