// Real Chromium helpers for the end-to-end tests: a fresh browser context that records
// where it navigated, and signing in on the test IdP's form.

/** A new context (its own cookie jar) and page; `visited` lists every navigation's URL. */
export async function newPage(browser) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const visited = [];
  page.on('request', (req) => { if (req.isNavigationRequest()) visited.push(req.url()); });
  return { context, page, visited };
}

/** Go to `url`, sign in on the IdP's form (at `issuer`), wait to be back at `url`. */
export async function signInWithBrowser(page, issuer, url, user, password) {
  await page.goto(url);
  await page.waitForURL((u) => u.href.startsWith(`${issuer}/interaction/`), { timeout: 15_000 });
  await page.fill('input[name="login"]', user);
  await page.fill('input[name="password"]', password);
  await Promise.all([page.waitForURL((u) => u.href === url, { timeout: 15_000 }), page.click('button[type="submit"]')]);
}
