// Getting the entity token from the aa-token-broker sidecar with java.net.http (Java 11+).
// Runs as a single file: AA_TOKEN_BROKER_URL=http://127.0.0.1:7373 java TokenClient.java
//
// - One HttpClient for the whole process (it pools connections), with no proxy: the broker is on loopback
//   and a proxy set for the JVM must never see the request (other clients: NO_PROXY=127.0.0.1,localhost).
// - A timeout on every call, and the status checked.
// - When a peer answers 401 for a token, POST .../refresh once and retry with the token it returns.
//
// With Spring's RestClient, the same as an interceptor on the client that calls peers (a sketch):
//
//   class EntityTokenInterceptor implements ClientHttpRequestInterceptor {
//     private final TokenClient broker = new TokenClient();
//     public ClientHttpResponse intercept(HttpRequest request, byte[] body, ClientHttpRequestExecution execution)
//         throws IOException {
//       request.getHeaders().setBearerAuth(broker.token().accessToken());
//       ClientHttpResponse response = execution.execute(request, body);
//       if (response.getStatusCode().value() != 401) return response;
//       response.close();
//       request.getHeaders().setBearerAuth(broker.refresh().accessToken());
//       return execution.execute(request, body);
//     }
//   }
//   RestClient peers = RestClient.builder().requestInterceptor(new EntityTokenInterceptor()).build();

import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

public class TokenClient {
    private static final Duration TIMEOUT = Duration.ofSeconds(2);
    // One client, reused by every call; NO_PROXY for the loopback broker.
    private static final HttpClient HTTP = HttpClient.newBuilder()
            .proxy(HttpClient.Builder.NO_PROXY)
            .connectTimeout(TIMEOUT)
            .build();

    private final String broker;

    public TokenClient() {
        String url = System.getenv().getOrDefault("AA_TOKEN_BROKER_URL", "http://127.0.0.1:7373");
        this.broker = url.endsWith("/") ? url.substring(0, url.length() - 1) : url;
    }

    /** The fields of the broker's answer that callers use. */
    public record Token(String accessToken, String entityId) {}

    /** The current token. Ask per request: the broker answers from memory. */
    public Token token() throws IOException, InterruptedException {
        return call("GET", "/v1/token");
    }

    /** A new token, for when a peer rejected the current one (the broker rate-limits this per entity). */
    public Token refresh() throws IOException, InterruptedException {
        return call("POST", "/v1/token/refresh");
    }

    private Token call(String method, String path) throws IOException, InterruptedException {
        HttpRequest request = HttpRequest.newBuilder(URI.create(broker + path))
                .timeout(TIMEOUT)
                .header("Metadata", "true")
                .method(method, HttpRequest.BodyPublishers.noBody())
                .build();
        HttpResponse<String> response = HTTP.send(request, HttpResponse.BodyHandlers.ofString());
        if (response.statusCode() != 200) {
            // 503 token_unavailable carries Retry-After; the body says why (never a secret).
            String body = response.body();
            throw new IOException("broker answered " + response.statusCode() + ": "
                    + body.substring(0, Math.min(body.length(), 300)));
        }
        return new Token(field(response.body(), "accessToken"), field(response.body(), "entityId"));
    }

    // The answer is flat JSON with plain string values; use your JSON library (Jackson, Gson) in real code.
    private static String field(String json, String name) throws IOException {
        Matcher m = Pattern.compile("\"" + name + "\"\\s*:\\s*\"([^\"]*)\"").matcher(json);
        if (!m.find()) throw new IOException("no " + name + " in the broker's answer");
        return m.group(1);
    }

    /** POSTs JSON to an AA network peer with the entity token; on 401 refreshes once and retries. */
    public HttpResponse<String> callPeer(URI peer, String json) throws IOException, InterruptedException {
        String token = token().accessToken();
        for (int attempt = 1; ; attempt++) {
            HttpRequest request = HttpRequest.newBuilder(peer)
                    .timeout(Duration.ofSeconds(30))
                    .header("Content-Type", "application/json")
                    .header("Authorization", "Bearer " + token)
                    .POST(HttpRequest.BodyPublishers.ofString(json))
                    .build();
            HttpResponse<String> response = HTTP.send(request, HttpResponse.BodyHandlers.ofString());
            if (response.statusCode() == 401 && attempt == 1) {
                token = refresh().accessToken();
                continue;
            }
            return response;
        }
    }

    public static void main(String[] args) throws Exception {
        TokenClient broker = new TokenClient();
        // Prints facts about the token, never the token.
        Token token = broker.token();
        System.out.println("java: entityId=" + token.entityId() + " tokenLength=" + token.accessToken().length());
        Token refreshed = broker.refresh();
        System.out.println("java: refreshed entityId=" + refreshed.entityId()
                + " tokenLength=" + refreshed.accessToken().length());
    }
}
